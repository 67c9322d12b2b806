"""HF directory round trips (single file and shards) and every bad-input error, naming file and problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_model
from safetensors.torch import load_file, save_file

import unmask
from unmask.checkpoint import INDEX_NAME, config_from_hf, load_model, save_model
from unmask.config import DecodeConfig, ModelConfig
from unmask.errors import CheckpointError

IDS = torch.randint(0, 120, (2, 11), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def saved(tmp_path, tokenizer) -> Path:
    model = make_model(7, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask)
    return save_model(model, tmp_path / "m", tokenizer=tokenizer)


def test_round_trip_gives_bit_identical_logits(tmp_path):
    model = make_model(7)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    assert torch.equal(loaded(IDS), model(IDS))
    assert not any(p.is_meta for p in loaded.parameters())


def test_sharded_and_single_file_saves_load_the_same(tmp_path):
    model = make_model(8)
    save_model(model, tmp_path / "single")
    save_model(model, tmp_path / "sharded", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "sharded" / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in model.state_dict().values())
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    assert torch.equal(load_model(tmp_path / "single")(IDS), load_model(tmp_path / "sharded")(IDS))


def test_saved_files_use_dream_names_and_config_fields(tmp_path):
    model = make_model(9)
    save_model(model, tmp_path / "m", dtype="bfloat16")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["architectures"] == ["DreamModel"]
    assert config["auto_map"]["AutoModel"] == "modeling_dream.DreamModel"
    assert config["torch_dtype"] == "bfloat16" and config["hidden_act"] == "silu"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rope_theta", "rms_norm_eps", "mask_token_id", "pad_token_id"):
        assert key in config
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert "model.layers.1.self_attn.q_proj.bias" in tensors and "lm_head.weight" in tensors
    assert "model.layers.0.self_attn.o_proj.bias" not in tensors  # Qwen2: no bias on o_proj
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # HF refuses files without it
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert gen["alg"] == "entropy" and gen["mask_token_id"] == 127


def test_load_casts_dtype_and_keeps_generation_defaults(saved):
    model, tok = unmask.load(saved, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.generation_defaults == DecodeConfig()
    assert tok.special.mask == model.config.mask_token_id


def test_dream_7b_preset_round_trips_its_config():
    config = ModelConfig.from_name("dream-7b")
    from unmask.checkpoint import config_to_hf

    parsed, family = config_from_hf(config_to_hf(config, torch.bfloat16))
    assert parsed == config and family == "dream"
    assert abs(config.num_parameters() - 7.6156e9) < 1e6  # Qwen2.5-7B size
    from unmask.model import DreamModel

    with torch.device("meta"):
        meta = DreamModel(config)
    assert sum(p.numel() for p in meta.parameters()) == config.num_parameters()


def test_atomic_save_replaces_an_existing_directory(tmp_path):
    save_model(make_model(1), tmp_path / "m")
    save_model(make_model(2), tmp_path / "m")
    assert torch.equal(load_model(tmp_path / "m")(IDS), make_model(2)(IDS))
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging or old directories left behind


# ---------------------------------------------------------------------------------------------------------
# errors


def expect_error(path, *needles):
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "does not exist")


def test_file_instead_of_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    expect_error(tmp_path / "f", "found a file")


def test_missing_config(tmp_path):
    (tmp_path / "m").mkdir()
    expect_error(tmp_path / "m", "no config.json")


def test_invalid_config_json(saved):
    (saved / "config.json").write_text("{not json")
    expect_error(saved, "config.json", "not valid JSON")


def test_unknown_model_type(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["model_type"] = "llama"
    (saved / "config.json").write_text(json.dumps(raw))
    expect_error(saved, "unknown model_type 'llama'")


def test_missing_tensor(saved):
    tensors = load_file(str(saved / "model.safetensors"))
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, str(saved / "model.safetensors"), metadata={"format": "pt"})
    expect_error(saved, "missing tensor", "model.layers.0.mlp.up_proj.weight")


def test_extra_tensor(saved):
    tensors = load_file(str(saved / "model.safetensors"))
    tensors["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
    save_file(tensors, str(saved / "model.safetensors"), metadata={"format": "pt"})
    expect_error(saved, "unexpected tensor", "model.layers.9.mlp.up_proj.weight", "model.safetensors")


def test_shape_mismatch(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["intermediate_size"] = 96
    (saved / "config.json").write_text(json.dumps(raw))
    expect_error(saved, "model.safetensors", "has shape", "implies")


def test_truncated_safetensors(saved):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(saved, "model.safetensors", "truncated or corrupt")


def test_corrupt_header(saved):
    (saved / "model.safetensors").write_bytes(b"\xff" * 64)
    expect_error(saved, "model.safetensors", "truncated or corrupt")


def test_index_listing_a_missing_shard(tmp_path):
    save_model(make_model(3), tmp_path / "m", max_shard_bytes=20_000)
    (tmp_path / "m" / "model-00002-of-" f"{len(list((tmp_path / 'm').glob('model-*'))):05d}.safetensors").unlink()
    expect_error(tmp_path / "m", "lists shard model-00002", "missing")


def test_no_weights(tmp_path, saved):
    (saved / "model.safetensors").unlink()
    expect_error(saved, "no model.safetensors")


def test_inconsistent_config_values(saved):
    raw = json.loads((saved / "config.json").read_text())
    raw["num_attention_heads"] = 5
    (saved / "config.json").write_text(json.dumps(raw))
    expect_error(saved, "config.json", "divisible")
