"""Sandbox throughput: isolated programs per second, pooled zygotes vs a fresh sandbox per program.

Runs a mix of small test programs with known verdicts (two-assert passes, assertion failures, name errors,
early exits), checks every verdict, and prints ONE JSON line with the results and the command to
reproduce. Usage: ``python bench/sandbox.py [--n 2000] [--fresh-n 100] [--workers N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from unmask.sandbox import isolation, run_many  # noqa: E402

# (program, expected status, expected error_kind); trivial two-assert programs dominate, as in evals.
MIX = [
    ("def f(x):\n    return x * 2\nassert f(2) == 4\nassert f(0) == 0\n", "passed", ""),
    ("def f(x):\n    return x + 1\nassert f(1) == 2\nassert f(2) == 4\n", "failed", "AssertionError"),
    ("assert sorted([3, 1, 2]) == [1, 2, 3]\nassert max([1, 5]) == 5\n", "passed", ""),
    ("assert undefined_name(1) == 2\n", "failed", "NameError"),
    ("import sys\nsys.exit(0)\nassert False\n", "failed", "early_exit"),
    ("import math\nassert math.gcd(12, 18) == 6\nassert math.isqrt(17) == 4\n", "passed", ""),
]


def measure(n: int, workers: int, fresh: bool) -> dict:
    programs = [MIX[i % len(MIX)] for i in range(n)]
    start = time.perf_counter()
    results = run_many([p for p, _, _ in programs], timeout=5.0, workers=workers, fresh=fresh)
    elapsed = time.perf_counter() - start
    wrong = [i for i, (r, (_, status, kind)) in enumerate(zip(results, programs))
             if (r.status, r.error_kind) != (status, kind)]
    if wrong:
        i = wrong[0]
        raise SystemExit(f"verdict mismatch on {len(wrong)} programs, first #{i}: {results[i]}")
    return {"programs": n, "seconds": round(elapsed, 3), "programs_per_s": round(n / elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000, help="programs for the pooled (zygote) design")
    ap.add_argument("--fresh-n", type=int, default=100, help="programs, fresh design (0: skip)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    measure(min(args.n, 20), args.workers, fresh=False)  # warm the page cache and the probe
    out = {
        "bench": "sandbox",
        "isolation": isolation().mode,
        "cores": os.cpu_count(),
        "workers": args.workers,
        "pooled": measure(args.n, args.workers, fresh=False),
        "fresh": measure(args.fresh_n, args.workers, fresh=True) if args.fresh_n > 0 else None,
        "verdicts_checked": True,
        "command": "python " + " ".join(["bench/sandbox.py", *sys.argv[1:]]),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
