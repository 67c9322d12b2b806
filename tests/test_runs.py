"""The run lifecycle shared by train and RL: the latest pointer, resume or refuse, atomic checkpoints with
pruning, metrics truncation on resume, RNG state round trip, device resolution and the stop step."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import make_model

from unmask.errors import ConfigError
from unmask.runs import (
    OPTIMIZER_FILE,
    StepLoop,
    append_jsonl,
    end_step,
    latest_checkpoint,
    process_group,
    resolve_device,
    resume_point,
    rng_state,
    save_checkpoint,
    set_rng_state,
    start_run_dir,
)


def test_checkpoints_are_pointed_to_pruned_and_block_a_fresh_run(tmp_path):
    run = tmp_path / "run"
    assert resume_point(run, resume=False) is None and resume_point(run, resume=True) is None
    run.mkdir()
    model = make_model(0)
    for step in (1, 2, 3):
        final = save_checkpoint(run, model, None, {"step": step}, keep=2, optimizer_state={"step": step})
    assert final == run / "checkpoint-0000003" and (final / OPTIMIZER_FILE).is_file()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000003"]
    assert not list(run.glob(".*"))  # no staging directory or temporary file left behind
    assert latest_checkpoint(run) == final and resume_point(run, resume=True) == final
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        resume_point(run, resume=False)
    (final / "trainer_state.pt").unlink()  # an incomplete checkpoint is never resumed from
    assert latest_checkpoint(run) is None


def test_start_run_dir_writes_the_config_and_truncates_logs_on_resume(tmp_path):
    run = tmp_path / "run"
    start_run_dir(run, "cfg.json", {"lr": 1.0}, resumed_at=None, logs=("metrics.jsonl",))
    assert json.loads((run / "cfg.json").read_text()) == {"lr": 1.0}
    for step in (1, 2, 3):
        append_jsonl(run / "metrics.jsonl", {"step": step})
        append_jsonl(run / "samples.jsonl", {"step": step})
    start_run_dir(run, "cfg.json", {"lr": 2.0}, resumed_at=2, logs=("metrics.jsonl", "samples.jsonl", "absent.jsonl"))
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert [json.loads(x)["step"] for x in (run / name).read_text().splitlines()] == [1, 2]
    assert json.loads((run / "cfg.json").read_text()) == {"lr": 2.0} and not (run / "absent.jsonl").exists()


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), torch.rand(3))
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_resolve_device_and_end_step(monkeypatch):
    assert resolve_device("cpu", 0) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", 3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda", 0)
    assert end_step(0, 10, None) == 10 and end_step(4, 10, 3) == 7 and end_step(8, 10, 5) == 10


def test_step_loop_ends_saves_on_the_last_step_and_calls_the_hook(tmp_path):
    from types import SimpleNamespace

    seen = []
    cfg = SimpleNamespace(max_steps=10, stop_after_steps=3, progress=False, report_to="none", to_dict=dict)
    loop = StepLoop(4, cfg, rank=0, desc="t", run_dir=tmp_path,
                    on_step=lambda step, record: seen.append((step, record)))
    assert loop.end == 7 and loop.bar is None and loop.trackers.writers == []
    assert [s for s in range(5, 8) if loop.due(s, 5)] == [5, 7]  # every 5 steps, and the last one
    loop.finished(5, {"loss": 1.0}, loss="1.0")
    loop.log({"step": 5, "loss": 1.0})
    loop.close()
    assert loop.history == [{"loss": 1.0}] and seen == [(5, {"loss": 1.0})]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 5, "loss": 1.0}\n'


def test_process_group_is_nothing_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with process_group("cpu"):
        assert not torch.distributed.is_initialized()
