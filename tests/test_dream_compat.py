"""``DecodeConfig.dream_compat`` reproduces Dream's own ``diffusion_generate`` call (docs/sampler.md,
"Dream-compatible mode"), and without it unmask's sampler differs from Dream's where it says it does.

``dream_reference.json`` holds output ids of Dream's own code (its generation_utils.py and modeling_dream.py on
transformers 4.46.2; the file's ``note`` says how they were made) for tiny random models rebuilt here from
seeds: greedy and sampled, every ``alg``, ``alg_temp``, a left-padded batch, masks inside the prompts (unequal
counts), bfloat16 — always with top_k left out, as Dream's README call leaves it. unmask with the switch must
give those ids exactly, through its reference decoder and through the remote code's ``diffusion_generate``
called as Dream's is (``torch.manual_seed``, then the call).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from conftest import MASK_ID, make_model

from unmask.checkpoint import save_model
from unmask.commands.common import add_dataclass_arguments, from_flags
from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults
from unmask.decoding.dispatch import decode
from unmask.decoding.lossless import rows_independent
from unmask.decoding.reference import dream_timesteps, reference_step
from unmask.decoding.sampling import categorical_draw
from unmask.errors import ConfigError

DREAM = json.loads((Path(__file__).parent / "dream_reference.json").read_text())
CASES = {case["name"]: case for case in DREAM["cases"]}
# The peaked model's nucleus (top_p 0.95 / 0.9 at temperature <= 0.5) holds fewer than 50 tokens and never the
# mask token, so there unmask's own sampler gives Dream's ids too; everywhere else the switch matters.
SAME_WITHOUT_SWITCH = {"readme_call_entropy", "padded_batch"}
# Dream commits the mask token here (the position stays masked), or its batch-mean count leaves masks over.
DREAM_LEAVES_MASKS = {"greedy_maskgit_plus", "greedy_topk_margin", "sampled_alg_temp", "masks_in_prompt"}


@pytest.fixture(scope="module")
def models():
    """The fixture's models, rebuilt; their parameter sums say whether they are still the ones Dream ran."""
    built = {}
    for name, spec in DREAM["models"].items():
        model = make_model(spec["seed"], sharpen=spec["sharpen"])
        with torch.no_grad():
            model.lm_head.weight[MASK_ID] *= spec["mask_row_scale"]
        model = model.to(getattr(torch, spec.get("dtype", "float32")))
        total = float(sum(p.detach().double().sum() for p in model.parameters()))
        assert abs(total - spec["parameter_sum"]) < 1e-6, (
            f"make_model no longer builds the model {name!r} that Dream's code ran: the fixture's ids do not apply")
        built[name] = model
    return built


def inputs(case) -> tuple[torch.Tensor, torch.Tensor | None]:
    mask = case.get("attention_mask")
    return torch.tensor(case["prompt"]), None if mask is None else torch.tensor(mask)


def unmask_ids(models, case, **changes) -> torch.Tensor:
    prompt, mask = inputs(case)
    config = DecodeConfig(**{**case["call"], **changes})
    return decode(models[case["model"]], prompt, mask, config=config, decoder=DecoderConfig(),
                  generator=torch.Generator().manual_seed(case["seed"])).sequences


@pytest.mark.parametrize("name", CASES)
def test_dream_compat_gives_the_ids_of_dreams_own_code(models, name):
    case = CASES[name]
    assert torch.equal(unmask_ids(models, case, dream_compat=True), torch.tensor(case["sequences"]))


@pytest.mark.parametrize("name", CASES)
def test_without_the_switch_unmask_differs_where_documented(models, name):
    case = CASES[name]
    dream, ours = torch.tensor(case["sequences"]), unmask_ids(models, case)
    assert torch.equal(ours, dream) == (name in SAME_WITHOUT_SWITCH)
    assert bool((dream == MASK_ID).any()) == (name in DREAM_LEAVES_MASKS)
    assert not bool((ours == MASK_ID).any())  # unmask's sampler never draws the mask token, and fills every row


def test_on_a_peaked_model_the_implicit_top_k_is_the_whole_difference(models):
    """greedy_entropy: nothing but Dream's inherited top_k=50 separates the two samplers (at temperature 0 it
    changes the entropies, hence the order); passing it explicitly makes unmask's sampler agree."""
    case = CASES["greedy_entropy"]
    assert torch.equal(unmask_ids(models, case, top_k=50), torch.tensor(case["sequences"]))


@pytest.fixture(scope="module")
def remote_models(models, tmp_path_factory, hf_modules_cache):
    """The same models saved by unmask and loaded by transformers through the remote code."""
    transformers = pytest.importorskip("transformers")
    loaded = {}
    for name, model in models.items():
        directory = save_model(model, tmp_path_factory.mktemp("saved") / name)
        kwargs = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": "auto"}
        loaded[name] = transformers.AutoModel.from_pretrained(directory, trust_remote_code=True,
                                                              local_files_only=True, **kwargs).eval()
    return loaded


@pytest.mark.parametrize("name", CASES)
def test_the_remote_method_called_as_dreams_gives_dreams_ids(remote_models, name):
    case = CASES[name]
    prompt, mask = inputs(case)
    extra = {} if mask is None else {"attention_mask": mask}
    with torch.random.fork_rng():
        torch.manual_seed(case["seed"])  # Dream draws from torch's global generator, and so does this call
        out = remote_models[case["model"]].diffusion_generate(prompt, **extra, **case["call"])
    assert torch.equal(out, torch.tensor(case["sequences"]))


def test_unset_filters_become_dreams_implicit_ones():
    assert DecodeConfig().token_filters == (None, None)
    assert DecodeConfig(dream_compat=True).token_filters == (1.0, 50)
    assert DecodeConfig(dream_compat=True, top_p=0.9, top_k=7).token_filters == (0.9, 7)
    assert DecodeConfig(top_p=0.9, top_k=7).token_filters == (0.9, 7)


def test_the_switch_is_refused_where_it_cannot_hold():
    with pytest.raises(ConfigError, match="stop_last"):
        DecodeConfig(dream_compat=True, stop_last=True)
    with pytest.raises(ConfigError, match="dream_compat must be true or false"):
        DecodeConfig(dream_compat="yes")
    compat = GenerationDefaults(DecodeConfig(dream_compat=True))
    assert compat.updated({}, {})[0].dream_compat
    for decoder in ({"decoder": "blocks"}, {"decoder": "parallel"}, {"lossless": True}):
        with pytest.raises(ConfigError, match="dream_compat"):
            compat.updated({}, decoder)
    model = make_model(0)
    with pytest.raises(ConfigError, match="dream_compat"):
        decode(model, torch.tensor([[1, 2]]), config=DecodeConfig(max_new_tokens=2, steps=2, dream_compat=True),
               decoder=DecoderConfig(decoder="blocks"))
    # Dream's batch-mean count couples the rows of a batch: they may not advance (or be served) independently
    assert rows_independent(DecodeConfig(temperature=0.0))
    assert not rows_independent(DecodeConfig(temperature=0.0, dream_compat=True))


def test_the_cli_flag():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, DecodeConfig, group="sampler")
    assert from_flags(DecodeConfig, parser.parse_args(["--dream-compat"])).dream_compat is True
    assert from_flags(DecodeConfig, parser.parse_args([])).dream_compat is False


def test_the_draw_is_torch_distributions_categorical():
    """Dream draws with torch.distributions.Categorical from the global generator; categorical_draw makes the
    same draw from an explicit one, and gives up (Dream's argmax fallback) where Categorical refuses."""
    probs = torch.softmax(torch.randn(6, 40, generator=torch.Generator().manual_seed(1)) * 3, -1)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        expected = torch.distributions.Categorical(probs=probs).sample()
    assert torch.equal(categorical_draw(probs, torch.Generator().manual_seed(5)), expected)
    broken = probs.clone()
    broken[2, 0] = float("nan")
    with pytest.raises(ValueError):
        torch.distributions.Categorical(probs=broken)
    assert categorical_draw(broken, torch.Generator().manual_seed(5)) is None


def test_a_batch_mean_count_remasks_a_short_row_and_leaves_a_long_one_masked():
    """The last step of Dream's sampler commits int(mean m) positions per row: here 2 (m = 1 and 3). The row
    with one mask gets a second pick off its masks, where the mask token is written (a real token is lost);
    the row with three keeps one mask. unmask's own count fills both rows."""
    canvas = torch.tensor([[5, 6, MASK_ID, 7], [5, MASK_ID, MASK_ID, MASK_ID]])
    logits = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(0)) * 5
    config = DecodeConfig(max_new_tokens=3, steps=1, alg="maskgit_plus", dream_compat=True)
    timesteps = dream_timesteps(1, config.eps)
    x = canvas.clone()
    committed, conf = reference_step(logits, x, canvas == MASK_ID, 0, timesteps, config, None, MASK_ID)
    assert (x == MASK_ID).sum(-1).tolist() == [1, 1]
    assert x[0, 2] != MASK_ID and bool((x[0] == MASK_ID).any())  # its mask filled, a real token re-masked
    assert committed.sum(-1).tolist() == [1, 2] and bool((conf[committed] != 0).all())
    own = canvas.clone()
    reference_step(logits, own, canvas == MASK_ID, 0, timesteps, config.replace(dream_compat=False), None, MASK_ID)
    assert not bool((own == MASK_ID).any()) and torch.equal(own[canvas != MASK_ID], canvas[canvas != MASK_ID])


def test_a_drawn_mask_token_leaves_the_position_masked_and_uncommitted():
    canvas = torch.tensor([[5, MASK_ID, MASK_ID]])
    logits = torch.zeros(1, 3, 128)
    logits[0, 1, MASK_ID] = 10.0  # position 1 predicts the mask token, position 2 token 9
    logits[0, 2, 9] = 10.0
    config = DecodeConfig(max_new_tokens=2, steps=1, alg="maskgit_plus", dream_compat=True)
    x = canvas.clone()
    committed, _ = reference_step(logits, x, canvas == MASK_ID, 0, dream_timesteps(1, config.eps), config, None,
                                  MASK_ID)
    assert x.tolist() == [[5, MASK_ID, 9]] and committed.tolist() == [[False, False, True]]
    own = canvas.clone()
    reference_step(logits, own, canvas == MASK_ID, 0, dream_timesteps(1, config.eps),
                   config.replace(dream_compat=False), None, MASK_ID)
    assert own[0, 1] != MASK_ID and own[0, 2] == 9
