"""Block diffusion (docs/model.md "Block diffusion"): the block-causal masks against hand-written ones, the
model against a naive forward, the exact cached decoder against full recomputation, left padding against each
row alone, and the refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from margins import Recorder, Rule, assert_margin
from test_model import naive_forward

from unmask.config import DecodeConfig, DecoderConfig, ModelConfig
from unmask.decoding import decode, decode_canvas
from unmask.diffusion import shift_logits
from unmask.errors import ConfigError
from unmask.model import block_causal_mask, block_ids

MASK = 127


# -- the masks ----------------------------------------------------------------------------------------------


def test_block_ids_count_from_the_origin_with_one_prefix_block():
    assert block_ids(7, 2, torch.tensor([3, 0])).tolist() == [[0, 0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 3, 3, 4]]
    assert block_ids(5, 4, 2).tolist() == [[0, 0, 1, 1, 1]]


def test_block_causal_mask_is_the_hand_written_one():
    # prefix [0, 2) then blocks [2, 4) and [4, 5)
    expected = [[1, 1, 0, 0, 0],
                [1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0],
                [1, 1, 1, 1, 0],
                [1, 1, 1, 1, 1]]
    assert block_causal_mask(block_ids(5, 2, 2)).int()[0, 0].tolist() == expected
    # a pad key is hidden from every other query; a pad query sees itself; queries from slot 2 on (a cache feed)
    valid = torch.tensor([[0, 1, 1, 1, 1]])
    padded = block_causal_mask(block_ids(5, 2, 2), valid).int()[0, 0].tolist()
    assert padded == [[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    fed = block_causal_mask(block_ids(5, 2, 2), valid, query_start=2, num_queries=2).int()[0, 0].tolist()
    assert fed == padded[2:4]


def test_block_size_must_be_a_positive_integer():
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ConfigError, match="block_size"):
            ModelConfig(block_size=bad)


# -- the model ----------------------------------------------------------------------------------------------


def test_block_causal_forward_matches_the_naive_reference_with_the_mask():
    model = make_model(1, block_size=3)
    ids = torch.randint(0, 120, (2, 11), generator=torch.Generator().manual_seed(0))
    origin = torch.tensor([4, 2])
    blocks = block_ids(11, 3, origin)
    allowed = blocks[:, None, :] <= blocks[:, :, None]  # (B, Tq, Tk)
    ours = model(ids, block_origin=origin).double()
    torch.testing.assert_close(ours, naive_forward(model, ids, allowed=allowed), atol=1e-5, rtol=1e-5)
    # block-causal: a later block cannot move an earlier one; the block itself is bidirectional
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 120
    again = model(changed, block_origin=origin)  # the last block: [10, 11) in row 0, [8, 11) in row 1
    torch.testing.assert_close(again[0, :10], ours[0, :10].float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again[1, :8], ours[1, :8].float(), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(again[1, 8], ours[1, 8].float())


def test_block_causal_left_padding_matches_each_row_alone():
    model = make_model(3, block_size=2)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(1, 120, (n,), generator=gen) for n in (5, 2)]
    tail = torch.randint(1, 120, (2, 4), generator=gen)  # the region after each prompt
    width = 5
    ids = torch.zeros(2, width + 4, dtype=torch.long)
    mask = torch.zeros(2, width + 4, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):width], ids[i, width:] = p, tail[i]
        mask[i, width - len(p):] = 1
    batched = model(ids, attention_mask=mask, block_origin=width)
    assert not batched.isnan().any()
    for i, p in enumerate(prompts):
        alone = model(torch.cat([p, tail[i]])[None], block_origin=len(p))
        torch.testing.assert_close(batched[i, width - len(p):], alone[0], atol=1e-5, rtol=1e-5)


def test_full_attention_model_refuses_a_block_origin():
    with pytest.raises(ValueError, match="block_origin"):
        make_model(0)(torch.ones(1, 4, dtype=torch.long), block_origin=2)


# -- the exact cached decoder -------------------------------------------------------------------------------


def _prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (3, 6), generator=gen)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :5] = 0
    return ids * mask, mask


DECODERS = [DecoderConfig(decoder="blocks", block_length=4),
            DecoderConfig(decoder="parallel", block_length=4, threshold=0.3)]


@pytest.mark.parametrize("decoder", DECODERS, ids=["blocks", "parallel"])
def test_cached_logits_equal_a_full_block_causal_forward_at_every_step(decoder):
    model = make_model(0, sharpen=20.0, block_size=4)
    ids, mask = _prompts()
    config = DecodeConfig(max_new_tokens=10, steps=10)
    gaps = []

    def probe(x, b0, b1, logits):
        full_mask = torch.cat([mask, torch.ones(3, x.shape[1] - 6, dtype=torch.long)], 1)
        full = shift_logits(model(x, attention_mask=full_mask, block_origin=6))[:, b0:b1]
        gaps.append(float((full - logits).abs().max()))

    result = decode(model, ids, mask, config=config, decoder=decoder, probe=probe)
    assert len(gaps) == result.stats.forward_passes > 0
    assert max(gaps) < 1e-4
    assert not bool((result.generated == MASK).any())


def _naive_block_decode(model, ids: torch.Tensor, length: int, steps_per_block: int) -> torch.Tensor:
    """The ``blocks`` rule at temperature 0 (alg maskgit_plus) with a full forward every step, one row alone."""
    x = torch.cat([ids, torch.full((1, length), MASK)], 1)
    size, origin = model.config.block_size, ids.shape[1]
    for b0 in range(origin, x.shape[1], size):
        b1 = min(b0 + size, x.shape[1])
        todo = b1 - b0
        counts = [todo // steps_per_block + (i < todo % steps_per_block) for i in range(min(steps_per_block, todo))]
        for k in counts:
            probs = shift_logits(model(x, block_origin=origin))[0, b0:b1].float()
            probs[:, MASK] = float("-inf")
            probs = probs.softmax(-1)
            conf, tok = probs.max(-1)
            conf[x[0, b0:b1] != MASK] = -1.0
            for j in conf.topk(k).indices.tolist():
                x[0, b0 + j] = tok[j]
    return x[0, origin:]


def test_cached_batch_with_left_padding_equals_each_row_and_a_naive_uncached_decode():
    model = make_model(1, sharpen=40.0, block_size=4)  # seeds chosen for margins >= 1e-3 (tests/margins.py)
    ids, mask = _prompts(1)
    config = DecodeConfig(max_new_tokens=8, steps=8, alg="maskgit_plus")
    decoder = DECODERS[0]
    with Recorder(model, decoder) as rec:
        batched = decode(model, ids, mask, config=config, decoder=decoder, probe=rec.probe, on_step=rec.on_step)
    assert_margin(rec.decisions(), Rule.of(config, decoder))  # every decision far from a tie: equality is a theorem
    for row in range(3):
        prompt = ids[row, mask[row].bool()][None]
        alone = decode(model, prompt, config=config, decoder=decoder)
        assert alone.generated[0].tolist() == batched.generated[row].tolist()
        assert _naive_block_decode(model, prompt, 8, 4).tolist() == batched.generated[row].tolist()


def test_early_stop_ends_at_the_first_eos_and_the_prefill_is_fused():
    model = make_model(0, sharpen=20.0, block_size=4)
    ids, mask = _prompts()
    config = DecodeConfig(max_new_tokens=12, steps=12)
    full = decode(model, ids, mask, config=config)
    assert full.stats.forward_passes == 12  # 3 blocks x 4 steps: no extra prefill or commit forwards
    stop_ids = (90, 120)  # tokens this random model repeats from its second block on
    early = decode(model, ids, mask, config=config, stop_ids=stop_ids,
                   decoder=DecoderConfig(decoder="blocks", block_length=4, early_stop=True))
    stops = [min(row.index(s) for s in stop_ids if s in row) for row in full.generated.tolist()]
    assert max(stops) < 8 and early.stats.forward_passes < 12
    for row, stop in enumerate(stops):  # the same text up to each row's stop; padding after it
        assert early.generated[row, :stop + 1].tolist() == full.generated[row, :stop + 1].tolist()


def test_decode_canvas_takes_a_suffix_and_refuses_infilling():
    model = make_model(0, sharpen=20.0, block_size=4)
    ids, mask = _prompts()
    canvas = torch.cat([ids, torch.full((3, 5), MASK)], 1)
    full_mask = torch.cat([mask, torch.ones(3, 5, dtype=torch.long)], 1)
    config = DecodeConfig(max_new_tokens=5, steps=5)
    assert (decode_canvas(model, canvas, full_mask, config=config).sequences.tolist()
            == decode(model, ids, mask, config=config).sequences.tolist())
    canvas[:, -1] = 7  # text after the masks: an infill
    with pytest.raises(ValueError, match="suffix of masks"):
        decode_canvas(model, canvas, full_mask, config=config)


@pytest.mark.parametrize("decoder, message", [
    (DecoderConfig(), "use --decoder blocks or parallel"),
    (DecoderConfig(decoder="blocks", block_length=8), "block_size 4"),
    (DecoderConfig(decoder="parallel", block_length=4, cache="prefix"), "exact and always on"),
])
def test_a_block_model_refuses_decoders_that_make_no_sense(decoder, message):
    model = make_model(0, block_size=4)
    ids, mask = _prompts()
    with pytest.raises(ConfigError, match=message):
        decode(model, ids, mask, config=DecodeConfig(max_new_tokens=4, steps=4), decoder=decoder)


def test_full_attention_models_still_take_the_approximate_path():
    model = make_model(0, sharpen=20.0)
    ids, mask = _prompts()
    config = DecodeConfig(max_new_tokens=8, steps=8)
    decoder = DecoderConfig(decoder="blocks", block_length=4, cache="prefix")
    assert decode(model, ids, mask, config=config, decoder=decoder).stats.forward_passes == 8
    assert decode(model, ids, mask, config=config).stats.forward_passes == 8  # the reference, unchanged default
