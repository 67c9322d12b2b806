"""Code extraction and program assembly; canonical solutions must pass and broken ones fail when run."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from unmask.data.benchmarks import HARNESS_IMPORTS, Task, load_benchmark, plus_check_program
from unmask.programs import INSTRUCT_PREFILL, build_program, default_mode, extract_code


def run_trusted(programs: list[str], timeout: float = 60.0) -> list[bool]:
    """Run trusted programs (canonical solutions) in subprocesses, two at a time; True = exit status 0."""

    def one(program: str) -> bool:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prog.py"
            path.write_text(program)
            try:
                proc = subprocess.run([sys.executable, str(path)], capture_output=True, timeout=timeout,
                                      cwd=tmp)
            except subprocess.TimeoutExpired:
                return False
            return proc.returncode == 0

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, programs))


def spread(tasks: list[Task], k: int) -> list[Task]:
    step = max(1, len(tasks) // k)
    return tasks[::step][:k]


# ---- extract_code ---------------------------------------------------------------------------------------


def test_extract_first_python_block() -> None:
    text = "Sure!\n```python\ndef f(x):\n    return x\n```\nand\n```python\nprint(1)\n```\n"
    assert extract_code(text) == "def f(x):\n    return x\n"


def test_extract_prefers_block_defining_entry_point() -> None:
    text = "```python\nimport os\n```\nThen:\n```py\ndef solve(a):\n    return a * 2\n```"
    assert extract_code(text, entry_point="solve") == "def solve(a):\n    return a * 2\n"
    assert extract_code(text) == "import os\n"
    # If no block defines it, fall back to the first Python block.
    assert extract_code(text, entry_point="other") == "import os\n"


def test_extract_missing_closing_fence() -> None:
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n") == "def f():\n    return 1\n"


def test_extract_with_instruct_prefill() -> None:
    continuation = "\ndef add(a, b):\n    return a + b\n```\n\nThis adds two numbers.\n```\nexample\n```"
    code = "def add(a, b):\n    return a + b\n"
    assert extract_code(INSTRUCT_PREFILL + continuation, entry_point="add") == code
    # Only the continuation (the prefill dropped): the leading code is closed by the first fence.
    assert extract_code(continuation, entry_point="add") == "\n" + code


def test_extract_skips_non_python_and_prose() -> None:
    text = "Sure\n```\nsome output\n```\n```bash\nls\n```\n```python\nx = 1\n```"
    # "Sure" parses as Python but is prose, so the first bare fence opens a block ("some output").
    assert extract_code(text) == "some output\n"
    assert extract_code("```bash\nls\n```\n```python\nx = 1\n```") == "x = 1\n"
    assert extract_code("def f():\n    return 2\n") == "def f():\n    return 2\n"  # no fences
    with pytest.raises(TypeError, match="str"):
        extract_code(None)  # type: ignore[arg-type]


# ---- build_program ------------------------------------------------------------------------------------


def test_build_program_shapes() -> None:
    he = load_benchmark("humaneval", limit=1)[0]
    prog = build_program(he, "    return 1\n")
    assert prog.startswith(HARNESS_IMPORTS)
    assert prog.endswith(he.test + f"\ncheck({he.entry_point})\n")
    assert he.prompt + "    return 1\n" in prog
    mb = load_benchmark("mbpp", limit=1)[0]
    prog = build_program(mb, mb.canonical_solution)
    assert prog.endswith(mb.test) and "check(" not in prog and mb.prompt not in prog
    inf = load_benchmark("humaneval-infilling-single", limit=1)[0]
    assert inf.prompt + "MIDDLE" + inf.extra["suffix"] in build_program(inf, "MIDDLE")
    assert [default_mode(t) for t in (he, mb, inf)] == ["humaneval", "mbpp", "infilling"]
    with pytest.raises(ValueError, match="unknown mode 'x'"):
        build_program(he, "", mode="x")
    with pytest.raises(ValueError, match="suffix"):
        build_program(he, "", mode="infilling")
    with pytest.raises(TypeError, match="completion"):
        build_program(he, None)  # type: ignore[arg-type]


def _cases() -> list[tuple[str, Task, str, bool]]:
    """(label, task, completion, should_pass) for canonical and broken completions."""
    cases: list[tuple[str, Task, str, bool]] = []
    for name in ("humaneval", "mbpp", "mbpp+"):
        for t in spread(load_benchmark(name), 20):
            cases.append((name, t, t.canonical_solution, True))
    he_plus = {t.task_id: t for t in load_benchmark("humaneval+")}
    for tid in ("HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/32", "HumanEval/53", "HumanEval/101",
                "HumanEval/120", "HumanEval/151", "HumanEval/163"):
        cases.append(("humaneval+", he_plus[tid], he_plus[tid].canonical_solution, True))
    for t in spread(load_benchmark("humaneval+mini"), 12):
        cases.append(("humaneval+mini", t, t.canonical_solution, True))
    for name in ("humaneval-infilling-single", "humaneval-infilling-multi", "humaneval-infilling-span",
                 "humaneval-infilling-span-light"):
        for t in spread(load_benchmark(name), 5):
            cases.append((name, t, t.canonical_solution, True))
    # Broken completions.
    for name in ("humaneval", "humaneval+", "humaneval-infilling-span-light"):
        for t in spread(load_benchmark(name), 4):
            cases.append((name + " broken", t, "    return None\n", False))
    for name in ("mbpp", "mbpp+"):
        for t in spread(load_benchmark(name), 4):
            cases.append((name + " broken", t, f"def {t.entry_point}(*args):\n    return None\n", False))
    # HumanEval/32: any root passes (a different, correct root finder), a non-root fails.
    find_zero = he_plus["HumanEval/32"]
    # Newton from other starting points: often a different root than the reference's.
    newton = ("    d = [xs[i] * i for i in range(1, len(xs))]\n"
              "    for x in (1.0, -1.0, 2.0, -2.0, 0.5, 0.0, 3.0, -3.0):\n"
              "        for _ in range(200):\n"
              "            if abs(poly(xs, x)) < 1e-6 or poly(d, x) == 0:\n                break\n"
              "            x -= poly(xs, x) / poly(d, x)\n"
              "        if abs(poly(xs, x)) < 1e-6:\n            return x\n"
              "    return x\n")
    cases.append(("find_zero newton", find_zero, newton, True))
    cases.append(("find_zero wrong", find_zero, "    return 12345.0\n", False))
    return cases


def test_assembled_programs_pass_or_fail_as_expected() -> None:
    cases = _cases()
    results = run_trusted([build_program(t, c) for _, t, c, _ in cases])
    wrong = [(label, t.task_id) for (label, t, _, ok), got in zip(cases, results) if got != ok]
    assert wrong == [], wrong
    assert sum(ok for *_, ok in cases) >= 100


def test_instruct_mode_runs_extracted_code() -> None:
    he = load_benchmark("humaneval")[10]
    mb = {t.task_id: t for t in load_benchmark("mbpp+")}["Mbpp/56"]  # entry point named `check`
    mbpp120 = {t.task_id: t for t in load_benchmark("mbpp+")}["Mbpp/120"]  # asserts need `math`
    answer = INSTRUCT_PREFILL + "\n" + he.prompt + he.canonical_solution + "```\nDone."
    mb_answer = f"Here you go:\n```python\n{mb.canonical_solution}\n```\n"
    wrong = f"```python\ndef {he.entry_point}(*a):\n    return ''\n```"
    base_120 = HARNESS_IMPORTS + mbpp120.canonical_solution + "\n" + mbpp120.extra["base_test"]
    programs = [build_program(he, answer, mode="instruct"), build_program(mb, mb_answer, mode="instruct"),
                build_program(he, wrong, mode="instruct"), build_program(he, "no code here", mode="instruct"),
                base_120, mbpp120.canonical_solution + "\n" + mbpp120.extra["base_test"]]
    assert run_trusted(programs) == [True, True, False, False, True, False]


def _exec_check(test: str, candidate: Any, name: str = "check") -> bool:
    namespace: dict[str, Any] = {}
    exec(test, namespace)
    try:
        namespace[name](candidate)
    except AssertionError:
        return False
    return True


def test_plus_check_program_comparisons() -> None:
    ref = "def f(a, b):\n    return a / b\n"
    test = plus_check_program(reference_source=ref, entry_point="f", inputs=[[1, 3], [2.0, 7]], atol=0.0)
    assert _exec_check(test, lambda a, b: a / b)
    assert _exec_check(test, lambda a, b: a / b * (1 + 1e-9))  # within EvalPlus's rtol 1e-7
    assert not _exec_check(test, lambda a, b: a / b + 1e-3)
    loose = plus_check_program(reference_source=ref, entry_point="f", inputs=[[1, 3]], atol=1e-2)
    assert _exec_check(loose, lambda a, b: a / b + 1e-3)
    pair = plus_check_program(reference_source="def g(x):\n    return (x, [x])\n", entry_point="g",
                              inputs=[[1], [float("inf")], [[1, 2]]], atol=0.0)
    assert _exec_check(pair, lambda x: (x, [x]))
    assert not _exec_check(pair, lambda x: [x, [x]])  # a list is not the expected tuple
    # Inputs are copied per call: a candidate that mutates its argument cannot corrupt the reference.
    mut = plus_check_program(reference_source="def h(xs):\n    return sum(xs)\n", entry_point="h",
                             inputs=[[[1, 2, 3]]], atol=0.0)
    assert _exec_check(mut, lambda xs: (sum(xs), xs.clear())[0])
    # Values without ==, such as re.Match, compare by what they show.
    match = plus_check_program(reference_source="import re\ndef m(s):\n    return re.match('a+', s)\n",
                               entry_point="m", inputs=[["aab"]], atol=0.0, check_name="_plus_check")
    import re

    assert _exec_check(match, lambda s: re.match("a+", s), "_plus_check")
    assert not _exec_check(match, lambda s: re.match("a", s), "_plus_check")
