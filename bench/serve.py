"""Serving benchmark: a bounded streaming load from a second process on loopback, then a schemathesis fuzz.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/serve.py --model models/unmask-small --clients 32 --requests 128

Starts ``unmask serve`` as a subprocess on a free 127.0.0.1 port (``--model``; without it a random ``test``
preset model is created in a temp dir), then runs ``--requests`` streaming completions from ``--clients``
concurrent clients in this process (httpx + asyncio) and measures requests/s, useful tokens/s, p50/p99 time
to first chunk and total latency, and errors. With ``--fuzz N`` it then runs schemathesis (N examples per
operation) against /openapi.json and counts 5xx answers. Prints one JSON line and the reproduce command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100), at least 1
    return ordered[int(rank) - 1]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first = None
    text, finish = "", None
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return {"error": resp.status_code}
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if first is None:
                first = time.perf_counter() - start
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": "stream"}
            text += chunk["choices"][0]["text"]
            finish = chunk["choices"][0]["finish_reason"] or finish
    return {"ttfc": first, "latency": time.perf_counter() - start, "text": text, "finish": finish}


async def load(url: str, *, clients: int, requests: int, max_tokens: int, steps: int, decoder: str) -> dict:
    prompts = ["def add(a, b):", "import os\n", "class Stack:", "for i in range(", "def fib(n):\n    ",
               "# sort a list\n", "x = [", "while True:"]
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"prompt": prompts[i % len(prompts)], "max_tokens": max_tokens, "steps": steps,
                        "temperature": 0, "stream": True, "seed": i, "decoder": decoder}
                try:
                    results.append(await one_request(client, url, body))
                except httpx.HTTPError as err:
                    results.append({"error": type(err).__name__})

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    return {"requests": requests, "clients": clients, "max_tokens": max_tokens, "steps": steps, "decoder": decoder,
            "errors": len(errors), "error_kinds": sorted(set(map(str, errors))), "seconds": round(wall, 3),
            "requests_per_s": round(len(ok) / wall, 3),
            "tokens_per_s": round(len(ok) * max_tokens / wall, 1),
            "ttfc_p50_s": round(percentile([r["ttfc"] for r in ok], 50), 3) if ok else None,
            "ttfc_p99_s": round(percentile([r["ttfc"] for r in ok], 99), 3) if ok else None,
            "latency_p50_s": round(percentile([r["latency"] for r in ok], 50), 3) if ok else None,
            "latency_p99_s": round(percentile([r["latency"] for r in ok], 99), 3) if ok else None,
            "mean_latency_s": round(statistics.fmean(r["latency"] for r in ok), 3) if ok else None}


def fuzz(url: str, examples: int, workdir: Path) -> dict:
    """schemathesis against the live OpenAPI schema; counts 5xx answers from its JUnit report."""
    exe = Path(sys.executable).with_name("schemathesis")
    cmd = [str(exe), "run", url + "/openapi.json", "--checks", "not_a_server_error", "--max-examples", str(examples),
           "--report", "junit", "--report-dir", str(workdir), "--no-color", "--seed", "0"]
    start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)  # schemathesis leaves a cache directory in its cwd: keep it there
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3000, cwd=workdir)
    out = proc.stdout + proc.stderr
    junit = "".join(p.read_text() for p in workdir.glob("*.xml"))
    tests = re.search(r'tests="(\d+)"', junit)
    return {"fuzz_exit": proc.returncode, "fuzz_seconds": round(time.perf_counter() - start, 1),
            "fuzz_operations": int(tests.group(1)) if tests else None,
            "fuzz_5xx": len(re.findall(r"Server error", out)), "fuzz_summary": out.strip().splitlines()[-1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a random test-preset model)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--decoder", default="reference", choices=["reference", "blocks", "parallel"])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--fuzz", type=int, default=0, help="schemathesis examples per operation (0 = skip)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "model")
            subprocess.run([sys.executable, "-m", "unmask.cli", "init", model, "--preset", "test", "--vocab-size",
                            "400", "--tokenizer-bytes", "200000"], env=env, check=True, capture_output=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "unmask.cli", "serve", "--model", model, "--port", str(port),
                                   "--max-concurrency", str(args.clients * 2), "--max-batch", str(args.max_batch),
                                   "--log-level", "warning"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            result = asyncio.run(load(url, clients=args.clients, requests=args.requests, max_tokens=args.max_tokens,
                                      steps=args.steps, decoder=args.decoder))
            result["model"] = args.model or "random test preset"
            result["max_batch"] = args.max_batch
            if args.fuzz:
                result.update(fuzz(url, args.fuzz, Path(tmp) / "fuzz"))
        finally:
            server.terminate()
            server.wait(30)
    print(json.dumps(result))
    print("reproduce: OMP_NUM_THREADS=1 PYTHONPATH=src python bench/serve.py " + shlex.join(sys.argv[1:]))
    return 0 if result["errors"] == 0 and result.get("fuzz_5xx", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
