"""A directory saved by unmask loads in ``transformers`` through the remote code it ships (src/unmask/hf).

Everything goes through the public loaders (``AutoConfig`` / ``AutoModel`` / ``AutoTokenizer`` with
``trust_remote_code=True``) on local directories, offline. The remote model must give unmask's logits exactly
(same weights, same operations in the same order), and ``diffusion_generate`` unmask's reference sampler's
ids, in either mode of ``dream_compat``: greedy, and sampled too when both draw from generators with the same
seed. (That dream_compat reproduces Dream's own code is tests/test_dream_compat.py's concern.)

A block-diffusion directory's ``diffusion_generate`` is unmask's ``blocks`` decoder instead, and must give the ids
of ``decode(..., decoder=DecoderConfig(decoder="blocks", block_length=block_size))``: greedy, and sampled with
equal seeds, since both draw in the same order at every step (the tokens of the block's masks in row-major order,
then, with ``alg_temp``, one Gumbel draw over the block's window). unmask caches the finished blocks' K/V and the
remote code recomputes them, so their logits agree only to float rounding: the model is sharpened (peaked
predictions), so that no choice hangs on the last bit.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import MASK_ID, make_model

from unmask.checkpoint import load_model, read_generation_config, save_model
from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding.dispatch import decode
from unmask.hf import REMOTE_CODE_FILES

transformers = pytest.importorskip("transformers")


def generate(model, input_ids, attention_mask=None, **params):
    """unmask's reference sampler (Dream's), whatever decoder the model's generation_config recommends."""
    return decode(model, input_ids, attention_mask, decoder=DecoderConfig(), **params)


TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5
IDS = torch.randint(1, 120, (3, 10), generator=torch.Generator().manual_seed(0))
LEFT_PADDED = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 10, [0] * 9 + [1]])


pytestmark = pytest.mark.usefixtures("hf_modules_cache")  # a temporary modules cache (conftest.py)


def imported_packages(path) -> set[str]:
    """Top-level packages a file imports (relative imports, between the shipped files, left out)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add(node.module.split(".")[0])
    return names


def load_remote(directory, **kwargs):
    return transformers.AutoModel.from_pretrained(directory, trust_remote_code=True, local_files_only=True,
                                                  **kwargs).eval()


@pytest.fixture(scope="module")
def block_pair(tmp_path_factory):
    """(a block-diffusion unmask model, block_size 4, and its directory loaded by transformers), peaked."""
    model = make_model(2, sharpen=20.0, block_size=4)
    directory = save_model(model, tmp_path_factory.mktemp("saved") / "block")
    return model, load_remote(directory)


def blocks_decode(model, prompt, attention_mask=None, generator=None, **settings):
    """unmask's own decoder of a block model (the exact cached one), at the model's block size."""
    decoder = DecoderConfig(decoder="blocks", block_length=model.config.block_size)
    return decode(model, prompt, attention_mask, config=DecodeConfig(**settings), decoder=decoder,
                  generator=generator).sequences


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(unmask model, the same directory loaded by transformers), peaked predictions (few ties)."""
    model = make_model(0, sharpen=20.0)
    directory = save_model(model, tmp_path_factory.mktemp("saved") / "m")
    return model, load_remote(directory)


def test_saved_directory_ships_the_code_its_auto_map_names(tmp_path):
    directory = save_model(make_model(1), tmp_path / "m")
    for name in REMOTE_CODE_FILES:
        assert (directory / name).is_file()
        assert imported_packages(directory / name) - set(sys.stdlib_module_names) <= {"torch", "transformers"}
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert {ref.split(".")[0] + ".py" for ref in auto_map.values()} <= set(REMOTE_CODE_FILES)
    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
    assert type(config).__name__ == "DreamConfig"
    assert (config.hidden_size, config.num_key_value_heads, config.head_dim) == (32, 2, 8)
    assert config.mask_token_id == MASK_ID
    assert config.tie_word_embeddings is False and config.rope_theta == 1e6
    for ref in auto_map.values():  # every class auto_map names exists
        cls = transformers.dynamic_module_utils.get_class_from_dynamic_module(ref, directory)
        assert cls.__name__ == ref.split(".")[1]


def test_causal_baseline_ships_no_remote_code(tmp_path):
    model = make_model(1)
    model.family = "qwen2"  # transformers' own Qwen2 loads it
    directory = save_model(model, tmp_path / "m")
    assert not any((directory / name).exists() for name in REMOTE_CODE_FILES)


def test_training_checkpoints_ship_the_code(tmp_path):
    from unmask.runs import save_checkpoint

    path = save_checkpoint(tmp_path, make_model(1), None, {"step": 3}, keep=2)
    assert all((path / name).is_file() for name in REMOTE_CODE_FILES)


def test_logits_equal_unmask_without_and_with_padding(pair):
    model, remote = pair
    with torch.no_grad():
        assert torch.equal(remote(IDS).logits, model(IDS))
        assert torch.equal(remote(IDS, attention_mask=LEFT_PADDED).logits, model(IDS, attention_mask=LEFT_PADDED))
        all_real = torch.ones_like(IDS)
        assert torch.equal(remote(IDS, attention_mask=all_real).logits, model(IDS))
        positions = torch.arange(10).flip(0).expand(3, 10)
        assert torch.equal(remote(IDS, position_ids=positions).logits, model(IDS, position_ids=positions))


def test_logits_equal_unmask_with_a_boolean_4d_mask(pair):
    model, remote = pair
    causal = torch.tril(torch.ones(10, 10, dtype=torch.bool))[None, None].expand(3, 1, 10, 10)
    with torch.no_grad():
        assert torch.equal(remote(IDS, attention_mask=causal).logits, model(IDS, attention_mask=causal))
        # a float 4-D mask is additive (transformers' convention): 0 where allowed, a large negative elsewhere
        additive = torch.zeros(3, 1, 10, 10).masked_fill(~causal, torch.finfo(torch.float32).min)
        torch.testing.assert_close(remote(IDS, attention_mask=additive).logits, model(IDS, attention_mask=causal))


def test_a_block_diffusion_model_loads_back_in_unmask_and_transformers_with_equal_logits(tmp_path):
    model = make_model(2, sharpen=20.0, block_size=4)
    directory = save_model(model, tmp_path / "block")
    assert json.loads((directory / "config.json").read_text())["block_size"] == 4
    again = load_model(directory)
    remote = load_remote(directory)
    assert again.config.block_size == 4 and remote.config.block_size == 4
    with torch.no_grad():
        for origin in (0, 6, torch.tensor([6, 3, 8])):
            ours = model(IDS, attention_mask=LEFT_PADDED, block_origin=origin)
            assert torch.equal(again(IDS, attention_mask=LEFT_PADDED, block_origin=origin), ours)
            assert torch.equal(remote(IDS, attention_mask=LEFT_PADDED, block_origin=origin).logits, ours)
        assert torch.equal(remote(IDS).logits, model(IDS))  # origin 0 by default, in both
        assert not torch.equal(remote(IDS).logits, make_model(2, sharpen=20.0)(IDS))  # block-causal, not full
    # and transformers users can decode it: unmask's block decoder (the tests below)
    out = remote.diffusion_generate(IDS[:, :4], max_new_tokens=4, steps=4, alg="maskgit_plus")
    assert torch.equal(out, blocks_decode(model, IDS[:, :4], max_new_tokens=4, steps=4, alg="maskgit_plus"))


@pytest.mark.parametrize("steps", [10, 7, 5])  # 3, 2 and 1 steps per block
@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
def test_greedy_block_diffusion_generate_equals_unmasks_blocks_decoder_on_a_padded_batch(block_pair, alg, steps):
    model, remote = block_pair
    prompt, mask = IDS[:, :6], LEFT_PADDED[:, 4:]
    settings = dict(max_new_tokens=10, steps=steps, alg=alg)  # blocks of 4, 4 and 2 after the prompt
    ours = blocks_decode(model, prompt, mask, **settings)
    theirs = remote.diffusion_generate(prompt, attention_mask=mask, **settings)
    assert torch.equal(theirs, ours)
    assert not bool((theirs == MASK_ID).any())
    # the attention mask and the block origin count: a decode without them differs
    assert not torch.equal(remote.diffusion_generate(prompt, **settings), theirs)


@pytest.mark.parametrize("settings", [
    dict(temperature=0.8, top_p=0.9, top_k=20, alg="entropy", alg_temp=0.5),
    dict(temperature=1.0, alg="maskgit_plus", steps=3),
    dict(temperature=0.7, alg="topk_margin", alg_temp=1.0),
])
def test_seeded_block_diffusion_generate_equals_unmasks_blocks_decoder(block_pair, settings):
    model, remote = block_pair
    prompt, mask = IDS[:, :6], LEFT_PADDED[:, 4:]
    settings = {"max_new_tokens": 10, "steps": 10, **settings}
    ours = blocks_decode(model, prompt, mask, generator=torch.Generator().manual_seed(3), **settings)
    theirs = remote.diffusion_generate(prompt, attention_mask=mask, generator=torch.Generator().manual_seed(3),
                                       **settings)
    assert torch.equal(theirs, ours)
    other = remote.diffusion_generate(prompt, attention_mask=mask, generator=torch.Generator().manual_seed(4),
                                      **settings)
    assert not torch.equal(other, theirs)  # the draws come from the generator


@pytest.mark.parametrize("settings", [dict(alg="maskgit_plus"), dict(temperature=0.7, alg="topk_margin", alg_temp=1.0)])
def test_block_diffusion_generate_holds_back_stop_tokens_as_unmask_does(tmp_path, settings):
    """stop_last on a block model whose eos (and pad) is a token it predicts often, so the demotion matters."""
    model = make_model(2, sharpen=20.0, block_size=4, eos_token_id=85, pad_token_id=85)
    remote = load_remote(save_model(model, tmp_path / "block"))
    prompt, mask = IDS[:, :6], LEFT_PADDED[:, 4:]
    runs = {}
    for stop_last in (False, True):
        run = {"max_new_tokens": 10, "steps": 10, "stop_last": stop_last, **settings}
        runs[stop_last] = remote.diffusion_generate(prompt, attention_mask=mask,
                                                    generator=torch.Generator().manual_seed(3), **run)
        ours = blocks_decode(model, prompt, mask, generator=torch.Generator().manual_seed(3), **run)
        assert torch.equal(runs[stop_last], ours)
    assert not torch.equal(runs[True], runs[False])


def test_block_diffusion_generate_fills_one_block_after_another(block_pair):
    _, remote = block_pair
    prompt = IDS[:2, :5]
    seen, first = [], []

    def record(step, x, logits):
        seen.append((step, logits.shape[1]))
        return logits

    out = remote.diffusion_generate(prompt, max_new_tokens=10, steps=5, alg="entropy", output_history=True,
                                    return_dict_in_generate=True, generation_logits_hook_func=record,
                                    generation_tokens_hook_func=lambda step, x, logits: first.append(step) or x)
    # steps 5 over 3 blocks: one step each, every forward over the canvas up to the end of its block
    assert seen == [(0, 9), (1, 13), (2, 15)] and first == [None, 0, 1, 2]
    assert len(out.history) == 3 and torch.equal(out.history[-1], out.sequences)
    for canvas, end in zip(out.history, (9, 13, 15)):
        assert not bool((canvas[:, :end] == MASK_ID).any()) and bool((canvas[:, end:] == MASK_ID).all())
    longer = remote.diffusion_generate(prompt, max_new_tokens=10, steps=10, alg="entropy", output_history=True,
                                       return_dict_in_generate=True)
    remaining = [int((canvas == MASK_ID).sum(-1)[0]) for canvas in longer.history]
    assert remaining == [8, 7, 6, 4, 3, 2, 1, 0]  # LLaDA's counts per block: 2 1 1, 2 1 1, 1 1


def test_block_diffusion_generate_hooks_may_change_the_logits(block_pair):
    _, remote = block_pair

    def force_token_five(step, x, logits):
        logits = logits.clone()
        logits[..., 5] = 1e4
        return logits

    out = remote.diffusion_generate(IDS[:, :4], max_new_tokens=6, steps=6, generation_logits_hook_func=force_token_five)
    assert bool((out[:, 4:] == 5).all())


def test_block_diffusion_generate_refuses_what_the_block_rule_cannot_run(block_pair):
    _, remote = block_pair
    with pytest.raises(ValueError, match="origin has no confidence"):
        remote.diffusion_generate(IDS[:, :4], max_new_tokens=4, steps=4, alg="origin")
    with pytest.raises(ValueError, match="dream_compat=True"):
        remote.diffusion_generate(IDS[:, :4], max_new_tokens=4, steps=4, dream_compat=True)
    # False is what it runs anyway; the default (Dream's sampler for a full-attention model) does not apply
    assert torch.equal(remote.diffusion_generate(IDS[:, :4], max_new_tokens=4, steps=4, dream_compat=False),
                       remote.diffusion_generate(IDS[:, :4], max_new_tokens=4, steps=4))


def test_bfloat16_and_tied_embeddings_load_exactly(tmp_path):
    model = make_model(2, tie_word_embeddings=True)
    save_model(model, tmp_path / "bf16", dtype="bfloat16")
    ours = load_model(tmp_path / "bf16")
    # the stored dtype, as transformers 4.x loads only when asked (5.x does by default)
    remote = load_remote(tmp_path / "bf16", **{"dtype" if TRANSFORMERS_5 else "torch_dtype": "auto"})
    assert remote.dtype == torch.bfloat16 and ours.dtype == torch.bfloat16
    assert remote.lm_head.weight.data_ptr() == remote.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(remote(IDS, attention_mask=LEFT_PADDED).logits, ours(IDS, attention_mask=LEFT_PADDED))


def test_hidden_states_and_tuple_output(pair):
    _, remote = pair
    with torch.no_grad():
        out = remote(IDS, output_hidden_states=True)
        assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (3, 10, 32)
        assert torch.equal(remote(IDS, return_dict=False)[0], out.logits)
        embeds = remote.get_input_embeddings()(IDS)
        assert torch.equal(remote(inputs_embeds=embeds).logits, out.logits)


def test_unsupported_features_are_refused_not_ignored(pair):
    _, remote = pair
    with pytest.raises(NotImplementedError, match="KV cache"):
        remote(IDS, past_key_values=object())
    with pytest.raises(NotImplementedError, match="loss"):
        remote(IDS, labels=IDS)
    with pytest.raises(TypeError, match="do_sample"):
        remote.diffusion_generate(IDS, do_sample=True)
    with pytest.raises(ValueError, match="alg"):
        remote.diffusion_generate(IDS, alg="nope")
    with pytest.raises(ValueError, match="rope_scaling"):
        type(remote.config)(rope_scaling={"type": "linear", "factor": 2.0})


@pytest.mark.parametrize("dream_compat", [False, True])
@pytest.mark.parametrize("alg", ["entropy", "maskgit_plus", "topk_margin"])
def test_greedy_diffusion_generate_equals_the_reference_sampler(pair, alg, dream_compat):
    """Both samplers of the remote code against unmask's reference decoder with the same switch (Dream's own
    output, which dream_compat reproduces, is checked in test_dream_compat.py)."""
    model, remote = pair
    prompt = IDS[:, :5]
    settings = dict(max_new_tokens=12, steps=6, temperature=0.0, alg=alg, dream_compat=dream_compat)
    ours = generate(model, prompt, **settings).sequences
    theirs = remote.diffusion_generate(prompt, **settings)
    assert torch.equal(theirs, ours)
    assert not bool((theirs == MASK_ID).any())


@pytest.mark.parametrize("settings", [
    dict(temperature=0.8, top_p=0.9, top_k=20, alg="entropy", alg_temp=0.5),
    dict(temperature=0.8, top_p=0.9, top_k=20, alg="entropy", alg_temp=0.5, dream_compat=True),
    dict(temperature=1.0, alg="origin"),
    dict(temperature=1.0, alg="origin", dream_compat=True),
    dict(temperature=0.0, alg="maskgit_plus", stop_last=True),
])
def test_seeded_diffusion_generate_equals_the_reference_sampler_on_a_padded_batch(pair, settings):
    model, remote = pair
    prompt, mask = IDS[:, :6], LEFT_PADDED[:, 4:]
    settings = {"max_new_tokens": 10, "steps": 5, "dream_compat": False, **settings}
    ours = generate(model, prompt, mask, generator=torch.Generator().manual_seed(3), **settings).sequences
    theirs = remote.diffusion_generate(prompt, attention_mask=mask, generator=torch.Generator().manual_seed(3),
                                       **settings)
    assert torch.equal(theirs, ours)


def test_defaults_come_from_generation_config_json(tmp_path):
    directory = save_model(make_model(4, sharpen=20.0), tmp_path / "m",
                           generation=DecodeConfig(max_new_tokens=7, steps=7, alg="topk_margin"))
    ours = load_model(directory)
    ours.generation_defaults = DecodeConfig.from_dict(read_generation_config(directory))  # as unmask.load does
    remote = load_remote(directory)
    assert remote.generation_config.steps == 7
    prompt = IDS[:2, :4]
    # generate() falls back to generation_defaults; the remote method is Dream's sampler unless told otherwise
    expected = generate(ours, prompt, dream_compat=True).sequences
    assert expected.shape == (2, 11)
    assert torch.equal(remote.diffusion_generate(prompt), expected)
    assert torch.equal(remote.diffusion_generate(prompt, dream_compat=False), generate(ours, prompt).sequences)
    shorter = generate(ours, prompt, max_new_tokens=5, dream_compat=True).sequences
    assert torch.equal(remote.diffusion_generate(prompt, max_length=9), shorter)  # max_length = prompt + new


def test_which_sampler_the_remote_method_runs_by_default(tmp_path):
    """Dream's (dream_compat) unless the directory or the call turns on unmask's stop_last; a directory saved
    with dream_compat says so in generation_config.json, and unmask's verbs follow it too."""
    model = make_model(4, sharpen=20.0)
    plain = read_generation_config(save_model(model, tmp_path / "plain"))
    assert "dream_compat" not in plain  # absent: each reader keeps its own default
    assert DecodeConfig.from_dict(plain).dream_compat is False
    compat = save_model(model, tmp_path / "compat", generation=DecodeConfig(max_new_tokens=6, steps=6,
                                                                             dream_compat=True))
    assert read_generation_config(compat)["dream_compat"] is True
    assert DecodeConfig.from_dict(read_generation_config(compat)).dream_compat is True
    remote = load_remote(compat)
    settings = remote._sampler_settings(remote.generation_config, {})
    assert settings["dream_compat"] is True and settings["top_k"] is None  # unset: Dream's implicit 50 applies
    stop_last = load_remote(save_model(model, tmp_path / "stop", generation=DecodeConfig(stop_last=True)))
    assert stop_last._sampler_settings(stop_last.generation_config, {})["dream_compat"] is False
    assert remote._sampler_settings(None, {"stop_last": True})["dream_compat"] is False
    assert remote._sampler_settings(None, {})["dream_compat"] is True
    with pytest.raises(ValueError, match="dream_compat=False"):
        remote.diffusion_generate(IDS[:1, :4], stop_last=True, dream_compat=True)


def test_history_and_return_dict(pair):
    _, remote = pair
    out = remote.diffusion_generate(IDS[:, :4], max_new_tokens=8, steps=4, output_history=True,
                                    return_dict_in_generate=True)
    assert len(out.history) == 4 and torch.equal(out.history[-1], out.sequences)
    remaining = [int((canvas == MASK_ID).sum()) for canvas in out.history]
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == 0
    plain = remote.diffusion_generate(IDS[:, :4], max_new_tokens=8, steps=4, return_dict_in_generate=True)
    assert plain.history is None and torch.equal(plain.sequences, out.sequences)


def test_hooks_see_aligned_logits_and_may_change_them(pair):
    _, remote = pair
    seen = []

    def force_token_five(step, x, logits):
        seen.append(step)
        logits = logits.clone()
        logits[..., 5] = 1e4
        return logits

    out = remote.diffusion_generate(IDS[:, :4], max_new_tokens=6, steps=3, generation_logits_hook_func=force_token_five)
    assert seen == [0, 1, 2] and bool((out[:, 4:] == 5).all())


def test_tokenizer_loads_with_auto_tokenizer(tmp_path, tokenizer):
    model = make_model(5, vocab_size=tokenizer.vocab_size, mask_token_id=tokenizer.special.mask)
    directory = save_model(model, tmp_path / "m", tokenizer=tokenizer)
    # trust_remote_code: AutoTokenizer reads config.json too, and would otherwise ask before running its auto_map
    auto = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=True, local_files_only=True)
    text = "def add(a, b):\n    return a + b\n"
    assert auto(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert auto.mask_token_id == tokenizer.special.mask
    remote = load_remote(directory)
    prompt = torch.tensor([tokenizer.encode(text)])
    assert torch.equal(remote.diffusion_generate(prompt, max_new_tokens=6, steps=3),
                       generate(model, prompt, max_new_tokens=6, steps=3, dream_compat=True).sequences)


def test_directory_without_the_code_still_loads_in_unmask(tmp_path):
    """Directories saved before the remote code was shipped (or with it deleted) load as before."""
    model = make_model(6)
    directory = save_model(model, tmp_path / "m")
    for name in REMOTE_CODE_FILES:
        (directory / name).unlink()
    loaded = load_model(directory)
    assert torch.equal(loaded(IDS), model(IDS))
    resaved = save_model(loaded, tmp_path / "again")  # and a re-save completes it
    assert all((resaved / name).is_file() for name in REMOTE_CODE_FILES)


@pytest.mark.slow
def test_remote_code_on_transformers_4():
    """This file and test_dream_compat.py again under a Python whose transformers is 4.x (Dream's pinned 4.46,
    where Dream's own code runs), when one is named."""
    python = os.environ.get("UNMASK_TRANSFORMERS_4_PYTHON")
    if not python:
        pytest.skip("set UNMASK_TRANSFORMERS_4_PYTHON to a Python with transformers 4.46 (docs/remote_code.md)")
    version = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("4."), f"{python} has transformers {version}, not 4.x"
    root = Path(__file__).resolve().parents[1]
    files = [__file__, str(root / "tests" / "test_dream_compat.py")]
    run = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", "not transformers_4"],
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root / "src")}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
