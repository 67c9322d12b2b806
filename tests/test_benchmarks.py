"""Benchmark loaders: counts, provenance hashes, the MBPP+ v0.2.0 derivation, samples files."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from unmask.data.benchmarks import (
    BENCHMARKS,
    DATA_DIR,
    MBPP_V020_REMOVED,
    MBPP_V020_URL_STRIPPED,
    Task,
    apply_arg_specs,
    infer_arg_specs,
    load_benchmark,
    read_evalplus_samples,
    write_evalplus_samples,
)

EXPECTED_COUNTS = {
    "humaneval": 164, "humaneval+": 164, "humaneval+mini": 164, "mbpp": 500, "mbpp-train": 464,
    "mbpp+": 378, "mbpp+v0.1.0": 399, "humaneval-infilling-single": 1033, "humaneval-infilling-multi": 5815,
    "humaneval-infilling-span": 1640, "humaneval-infilling-span-light": 164,
}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_counts_and_fields(name: str) -> None:
    tasks = load_benchmark(name)
    assert len(tasks) == EXPECTED_COUNTS[name]
    assert len({t.task_id for t in tasks}) == len(tasks)
    for t in tasks:
        assert t.benchmark == name and t.entry_point.isidentifier() and t.test.strip()
    assert load_benchmark(name, limit=3) == tasks[:3]


def test_shipped_files_match_their_license_notes() -> None:
    folders = [p for p in DATA_DIR.iterdir() if p.is_dir()]
    expected = {"humaneval", "humanevalplus", "mbpp", "mbppplus", "humaneval_infilling"}
    assert {p.name for p in folders} == expected
    for folder in folders:
        note = (folder / "LICENSE-NOTE.md").read_text()
        assert re.search(r"License: (MIT|Apache-2\.0|CC-BY-4\.0)", note)
        for data in folder.iterdir():
            if data.name != "LICENSE-NOTE.md":
                digest = hashlib.sha256(data.read_bytes()).hexdigest()
                assert digest in note, f"{data} sha256 {digest} not recorded in its LICENSE-NOTE.md"


def test_unknown_name_and_bad_limit() -> None:
    with pytest.raises(ValueError, match="unknown benchmark 'humaneval-x'.*humaneval\\+.*mbpp\\+"):
        load_benchmark("humaneval-x")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit"):
            load_benchmark("humaneval", limit=bad)  # type: ignore[arg-type]


def test_mbppplus_v020_derivation() -> None:
    v010 = {t.task_id: t for t in load_benchmark("mbpp+v0.1.0")}
    v020 = {t.task_id: t for t in load_benchmark("mbpp+")}
    assert len(MBPP_V020_REMOVED) == 21 and len(MBPP_V020_URL_STRIPPED) == 18
    assert set(v010) - set(v020) == MBPP_V020_REMOVED
    for tid in MBPP_V020_URL_STRIPPED:
        assert "http" in v010[tid].prompt and "http" not in v020[tid].prompt
        url = re.search(r" ?https?://\S+", v010[tid].prompt)[0]
        assert v020[tid].prompt == v010[tid].prompt.replace(url, "")
    assert not any("http" in t.prompt for t in v020.values())
    # Everything else is untouched.
    same = [tid for tid in v020 if tid not in MBPP_V020_URL_STRIPPED]
    assert all(v020[tid].prompt == v010[tid].prompt and v020[tid].test == v010[tid].test for tid in same)


def test_mbpp_prompt_and_splits() -> None:
    mbpp = load_benchmark("mbpp")
    assert [t.task_id for t in mbpp] == [f"Mbpp/{i}" for i in range(11, 511)]
    t = mbpp[0]
    assert t.prompt.startswith('"""\n' + t.extra["text"]) and t.extra["test_list"][0] in t.prompt
    assert re.search(rf"def\s+{t.entry_point}\s*\(", t.canonical_solution)
    assert all(re.search(rf"\b{t.entry_point}\s*\(", t.extra["test_list"][0]) for t in mbpp)
    # The data README: 111 of the 374 train tasks (601-974) are MBPP+ tasks.
    train = [t for t in load_benchmark("mbpp-train") if int(t.task_id.split("/")[1]) >= 601]
    assert len(train) == 374 and sum(t.extra["in_mbppplus"] for t in train) == 111


def test_plus_tests_embed_all_inputs() -> None:
    he = {t.task_id: t for t in load_benchmark("humaneval+")}
    t = he["HumanEval/0"]
    assert t.extra["n_base"] == 7 and t.extra["n_plus"] > 100
    assert "def check(candidate):" in t.test and "def check(candidate):" in t.extra["base_test"]
    mp = {t.task_id: t for t in load_benchmark("mbpp+")}
    # Mbpp/2 takes tuples: the JSON lists were turned back into tuples from the task's own asserts.
    assert mp["Mbpp/2"].extra["arg_specs"] == [("tuple", None), ("tuple", None)]
    assert "[(3, 4, 5, 6), (5, 7, 4, 10)]" in mp["Mbpp/2"].test
    assert mp["Mbpp/2"].prompt.count("assert similar_elements") == 1
    inferred = sum(t.extra["arg_specs"] is not None for t in mp.values())
    assert inferred >= 0.98 * len(mp)


def test_infer_arg_specs_by_hand() -> None:
    assertion = "assert f((1, 2), [[3, 4]], {5}) == 1\n"
    specs = infer_arg_specs(assertion, "f", [[[1, 2], [[3, 4]], [5]]])
    assert specs == [("tuple", None), ("list", ("list", None)), ("set", None)]
    assert apply_arg_specs(specs, [[9], [[8]], [7, 7]]) == [(9,), [[8]], {7}]
    # Nesting deeper than the literal (recursive tuples), and complex numbers stored as strings.
    rec = infer_arg_specs("assert g((4, (5, 6)))", "g", [[[4, [5, 6]]]])
    assert apply_arg_specs(rec, [[1, [2, [3, [4]]]]]) == [(1, (2, (3, (4,))))]
    num = infer_arg_specs("assert h(0, 1j)", "h", [["0", "1j"]])
    assert apply_arg_specs(num, ["(1+2j)", "3"]) == [1 + 2j, 3 + 0j]
    # A spec that cannot reproduce any base input is rejected.
    assert infer_arg_specs("assert f((1, 2))", "f", [[[1, 2, 3]]]) is None


def _code_lines(text: str) -> list[str]:
    # The infilling files drop some blank lines of the original solutions.
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_infilling_pieces_rebuild_the_humaneval_solution() -> None:
    he = {t.task_id: t for t in load_benchmark("humaneval")}
    for t in load_benchmark("humaneval-infilling-span-light")[:40]:
        original = he["HumanEval/" + t.task_id.split("/")[2]]  # RandomSpanInfillingLight/HumanEval/<n>/<k>
        rebuilt = t.prompt + t.canonical_solution + t.extra["suffix"]
        assert _code_lines(rebuilt) == _code_lines(original.prompt + original.canonical_solution)
        assert t.entry_point == original.entry_point


def test_task_validation() -> None:
    with pytest.raises(TypeError, match="Task.prompt"):
        Task("t", None, "f", "", "x", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an identifier"):
        Task("t", "p", "my func", "", "x", "b")


def test_evalplus_samples_round_trip(tmp_path: Path) -> None:
    samples = [{"task_id": "HumanEval/0", "solution": "def f():\n    return 'é'\n"},
               {"task_id": "Mbpp/2", "completion": "    return 1\n", "extra": 3}]
    path = tmp_path / "samples.jsonl"
    write_evalplus_samples(path, samples)
    assert read_evalplus_samples(path) == samples
    lines = path.read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == ["HumanEval/0", "Mbpp/2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.jsonl"]  # no temp file left behind


def test_evalplus_samples_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with pytest.raises(ValueError, match="sample #1: needs exactly one"):
        write_evalplus_samples(path, [{"task_id": "a", "solution": ""}, {"task_id": "b"}])
    assert not path.exists()  # nothing written on failure
    with pytest.raises(ValueError, match="exactly one"):
        write_evalplus_samples(path, [{"task_id": "a", "solution": "", "completion": ""}])
    with pytest.raises(ValueError, match="task_id"):
        write_evalplus_samples(path, [{"task_id": 3, "solution": ""}])
    path.write_text('{"task_id": "a", "solution": "x"}\n\n{not json}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:3: not valid JSON"):
        read_evalplus_samples(path)
