"""A model's generation_config.json may recommend a decoder (``decoder``, ``block_length``, …) besides the sampler
settings; every verb and the Python API use both when given no flags, and flags override them."""

from __future__ import annotations

import json

import pytest
import torch

import unmask
from unmask.cli import main
from unmask.config import DecoderConfig, override_decoder
from unmask.decoding.trace import DecodeTrace

BLOCKS = ["--generation", "decoder=blocks", "--generation", "block_length=8", "--generation", "max_new_tokens=16",
          "--generation", "steps=16"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(a plain model directory, the same weights recommending the blocks decoder with 8-token blocks)"""
    root = tmp_path_factory.mktemp("gen")
    plain, blocks = root / "plain", root / "blocks"
    assert main(["init", str(plain), "--preset", "test", "--vocab-size", "400", "--tokenizer-bytes", "200000"]) == 0
    assert main(["convert", str(plain), str(blocks), *BLOCKS]) == 0
    return plain, blocks


def generate_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def first_block_positions(out: dict, steps: int = 8) -> set[int]:
    """Region positions committed in the first ``steps`` steps of the decode trace."""
    return {p for step in DecodeTrace.from_json(out["trace"]).order(0)[:steps] for p in step}


def test_convert_writes_the_recommended_decoder_and_load_reads_it(dirs):
    plain, blocks = dirs
    written = json.loads((blocks / "generation_config.json").read_text())
    assert written["decoder"] == "blocks" and written["block_length"] == 8 and written["steps"] == 16
    assert "decoder" not in json.loads((plain / "generation_config.json").read_text())  # reference: nothing written
    model, _ = unmask.load(blocks)
    assert model.decoder_defaults == DecoderConfig(decoder="blocks", block_length=8)
    assert unmask.load(plain)[0].decoder_defaults == DecoderConfig()


def test_generate_without_flags_uses_the_recommended_decoder(dirs, capsys):
    _, blocks = dirs
    implicit = generate_json(capsys, str(blocks), "def f(x):")
    explicit = generate_json(capsys, str(blocks), "def f(x):", "--decoder", "blocks", "--block-length", "8",
                             "--max-new-tokens", "16", "--steps", "16")
    reference = generate_json(capsys, str(blocks), "def f(x):", "--decoder", "reference")
    assert implicit["generated_ids"] == explicit["generated_ids"] and implicit["decoder"] == explicit["decoder"]
    assert implicit["decoder"]["decoder"] == "blocks" and implicit["decoder"]["block_length"] == 8
    # semi-autoregressive blocks: the first 8 steps fill exactly the first block; the reference ranks globally
    assert first_block_positions(implicit) == set(range(8))
    assert reference["decoder"] == {**implicit["decoder"], "decoder": "reference", "block_length": 32}
    assert first_block_positions(reference) != set(range(8))


def test_the_python_api_uses_the_recommended_decoder(dirs, capsys):
    _, blocks = dirs
    model, tokenizer = unmask.load(blocks)
    out = unmask.generate(model, torch.tensor([tokenizer.encode("def f(x):")]), seed=0)
    cli = generate_json(capsys, str(blocks), "def f(x):")
    assert out.generated[0].tolist() == cli["generated_ids"]
    reference = unmask.generate(model, torch.tensor([tokenizer.encode("def f(x):")]), seed=0,
                                decoder=DecoderConfig(), trace=True)
    assert {p for step in reference.trace.order(0)[:8] for p in step} != set(range(8))


def test_eval_and_arness_record_the_recommended_decoder(dirs, tmp_path):
    _, blocks = dirs
    common = ["--benchmark", "synthetic", "--limit", "1", "--synthetic-tasks", "1", "--max-new-tokens", "8",
              "--no-progress"]
    assert main(["eval", str(blocks), *common, "--out", str(tmp_path / "eval")]) == 0
    recorded = json.loads((tmp_path / "eval" / "eval_config.json").read_text())
    assert recorded["decoder"]["decoder"] == "blocks" and recorded["decoder"]["block_length"] == 8
    assert main(["eval", str(blocks), *common, "--decoder", "reference", "--out", str(tmp_path / "ref")]) == 0
    assert "decoder" not in json.loads((tmp_path / "ref" / "eval_config.json").read_text())
    assert main(["arness", str(blocks), *common, "--temperatures", "0", "--out", str(tmp_path / "sweep")]) == 0
    assert json.loads((tmp_path / "sweep" / "sweep_config.json").read_text())["decoder"]["decoder"] == "blocks"


def test_infill_uses_the_recommended_decoder(dirs, capsys, tmp_path):
    _, blocks = dirs
    (tmp_path / "pre.py").write_text("def f(x):\n    return ")
    capsys.readouterr()
    assert main(["infill", str(blocks), "--prefix", str(tmp_path / "pre.py"), "--length", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["decoder"]["decoder"] == "blocks"


def test_naming_another_decoder_starts_from_its_defaults():
    recommended = DecoderConfig(decoder="blocks", block_length=8, cache="prefix")
    assert override_decoder(recommended, {}) == recommended
    assert override_decoder(recommended, {"threshold": 0.5}) == recommended.replace(threshold=0.5)
    assert override_decoder(recommended, {"decoder": "reference"}) == DecoderConfig()  # no cache error
    assert override_decoder(recommended, {"decoder": "blocks", "block_length": 4}) == recommended.replace(
        block_length=4)


def test_convert_refuses_an_unknown_key_or_a_bad_decoder(dirs, capsys, tmp_path):
    plain, _ = dirs
    assert main(["convert", str(plain), str(tmp_path / "a"), "--generation", "decoder=bogus"]) == 2
    assert "decoder must be one of reference, blocks, parallel" in capsys.readouterr().err
    assert main(["convert", str(plain), str(tmp_path / "b"), "--generation", "blocklength=8"]) == 2
    assert "block_length" in capsys.readouterr().err  # the message lists the valid keys


def test_serve_requests_default_to_the_recommended_decoder(dirs):
    pytest.importorskip("fastapi")
    from unmask.serve.app import Engine
    from unmask.serve.config import ServeConfig
    from unmask.serve.schemas import DiffusionParams

    _, blocks = dirs
    model, tokenizer = unmask.load(blocks)
    engine = Engine(model, tokenizer, ServeConfig(), "blocks")
    prompt = tokenizer.encode("def f(x):")
    assert engine.plan(DiffusionParams(), prompt, []).decoder == DecoderConfig(decoder="blocks", block_length=8)
    assert engine.plan(DiffusionParams(block_length=4), prompt, []).decoder.block_length == 4
    assert engine.plan(DiffusionParams(decoder="reference"), prompt, []).decoder == DecoderConfig()
    # masks inside the prompt default to the reference sampler: the recommendation is for completions
    assert engine.plan(DiffusionParams(), prompt + [tokenizer.special.mask], [(len(prompt), 1)]).decoder == (
        DecoderConfig())


def test_defaults_load_beside_the_model_and_explicit_settings_win(dirs):
    from unmask.checkpoint import load_generation_defaults
    from unmask.config import GenerationDefaults

    _, blocks = dirs
    model, tokenizer = unmask.load(blocks)
    defaults = load_generation_defaults(blocks)  # what the verbs read and pass on
    assert defaults == GenerationDefaults.of(model)
    assert defaults.decoder == DecoderConfig(decoder="blocks", block_length=8)
    assert defaults.updated({"steps": 4}, {"decoder": "reference"}) == (defaults.decode.replace(steps=4),
                                                                        DecoderConfig())
    pytest.importorskip("fastapi")
    from unmask.serve.app import Engine
    from unmask.serve.config import ServeConfig
    from unmask.serve.schemas import DiffusionParams

    given = GenerationDefaults(defaults.decode.replace(max_new_tokens=16), DecoderConfig())
    engine = Engine(model, tokenizer, ServeConfig(), "blocks", given)  # the settings given, not the model's
    assert engine.plan(DiffusionParams(), tokenizer.encode("def f(x):"), []).decoder == DecoderConfig()
