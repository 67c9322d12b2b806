"""Shared fixtures: tiny seeded models and a small BPE tokenizer (CPU, fast)."""

from __future__ import annotations

import os
import sys

# The suite's models are tiny and several tests start subprocesses (torchrun, the CLI, the server): one
# OpenMP thread per process avoids oversubscribing a 2-core machine, which made the suite ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from unmask.config import ModelConfig  # noqa: E402
from unmask.model import DreamModel  # noqa: E402

MASK_ID = 127


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
