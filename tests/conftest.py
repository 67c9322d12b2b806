"""Shared fixtures: tiny seeded models and a small BPE tokenizer (CPU, fast)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# The suite's models are tiny and several tests start subprocesses (torchrun, the CLI, the server): one
# OpenMP thread per process avoids oversubscribing a 2-core machine, which made the suite ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from unmask.config import ModelConfig  # noqa: E402
from unmask.model import DreamModel  # noqa: E402

MASK_ID = 127
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """bench/NAME.py as a module (the bench scripts are not a package). Their folder is on sys.path while it
    loads, as when it runs as a script, so it may import its siblings; it is registered in sys.modules because
    dataclasses look their module up while the file executes."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH_DIR))
    return module


def make_model(seed: int = 0, *, sharpen: float = 1.0, **overrides) -> DreamModel:
    """A random `test`-preset model; ``sharpen`` scales lm_head so predictions are peaked, not flat."""
    ids = dict(mask_token_id=MASK_ID, pad_token_id=0, eos_token_id=0, bos_token_id=0)
    if overrides.get("vocab_size", 128) <= MASK_ID:
        ids["mask_token_id"] = overrides["vocab_size"] - 1
    config = ModelConfig.from_name("test", **{**ids, **overrides})
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.eval()


@pytest.fixture(scope="session")
def hf_modules_cache(tmp_path_factory):
    """transformers copies remote code into a modules cache (~/.cache by default) and imports it from there as
    the package ``transformers_modules``, once per process: one temporary cache for the whole session."""
    transformers = pytest.importorskip("transformers")
    patch = pytest.MonkeyPatch()
    patch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("modules")))
    patch.setattr(sys, "path", list(sys.path))  # it appends the cache to sys.path
    yield
    patch.undo()


@pytest.fixture
def model() -> DreamModel:
    return make_model(0, sharpen=20.0)


@pytest.fixture(scope="session")
def tokenizer():
    from unmask.corpus import stdlib_texts
    from unmask.tokenizer import train_bpe

    return train_bpe(stdlib_texts(max_bytes=300_000), 600)
