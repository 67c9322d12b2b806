"""Experiment trackers (unmask.trackers): --report-to tensorboard writes every metrics.jsonl number as a scalar,
a resumed run's events are purged past its checkpoint as metrics.jsonl is, wandb stays offline, and a missing
package or an unknown tracker is a one-line error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from test_train import config, cyclic_rows, tiny_model

from unmask import trackers
from unmask.errors import ConfigError
from unmask.rl.config import RLConfig
from unmask.train import TrainConfig, TrainData, train


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the run's TensorBoard events, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))  # TensorBoard stores scalars as float32


def expected(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                series.setdefault(key, []).append((record["step"], as_float32(value)))
    return series


def test_tensorboard_scalars_equal_the_metrics_jsonl_values_across_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    rows = cyclic_rows()
    common = dict(max_steps=6, save_every=2, eval_every=3, report_to="tensorboard")
    train(config(tmp_path, "run", stop_after_steps=5, **common), model=tiny_model(), data=TrainData(rows, rows))
    # a kill after step 5 but before its checkpoint: back to the step-4 one
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoint-0000005")
    (run / "latest").write_text("checkpoint-0000004\n")
    train(config(tmp_path, "run", resume=True, **common), model=tiny_model(), data=TrainData(rows, rows))
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6] and "val_loss" in records[2]
    assert scalars(run) == expected(records)  # step 5 once, from the resumed run: the first one's was purged


def test_wandb_logs_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "unset")  # recorded, so the test leaves the environment as it found it
    monkeypatch.delenv("WANDB_MODE")
    rows = cyclic_rows()
    train(config(tmp_path, "run", max_steps=2, report_to="wandb"), model=tiny_model(), data=TrainData(rows, rows))
    assert (tmp_path / "run" / "wandb").is_dir() and trackers.os.environ["WANDB_MODE"] == "offline"


def test_unknown_or_missing_trackers_are_one_line_errors(tmp_path, monkeypatch):
    for cls in (TrainConfig, RLConfig):
        with pytest.raises(ConfigError, match="^report_to: unknown tracker 'mlflow'; choose from tensorboard, wandb"):
            cls(report_to="tensorboard,mlflow")
    assert trackers.parse("none") == () and trackers.parse(" tensorboard, wandb ") == ("tensorboard", "wandb")
    find_spec = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec",
                        lambda name: None if name == "tensorboard" else find_spec(name))
    rows = cyclic_rows()
    with pytest.raises(ConfigError, match=r"^--report-to tensorboard needs `pip install tensorboard`$"):
        train(config(tmp_path, "run", report_to="tensorboard"), model=tiny_model(), data=TrainData(rows, rows))
    assert not (tmp_path / "run").exists()  # refused before anything was written
