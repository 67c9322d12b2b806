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


# -- training: the two-stream layout ------------------------------------------------------------------------


def test_two_stream_mask_is_the_hand_written_one():
    from unmask.diffusion import two_stream_mask

    blocks = torch.tensor([[0, 1, 1, 2]])  # a one-token prefix, a block of two, a block of one
    n = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]]  # noisy -> noisy: the same block only
    c = [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]]  # noisy -> clean: earlier blocks only
    cc = [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]  # clean -> clean: block-causal
    zero = [[0] * 4] * 4
    expected = [a + b for a, b in zip(n, c)] + [a + b for a, b in zip(zero, cc)]
    assert two_stream_mask(blocks).int()[0, 0].tolist() == expected
    # annealing restricts the own block (here to causal); a missing key vanishes except for its own query
    causal = torch.ones(4, 4, dtype=torch.bool).tril()
    got = two_stream_mask(blocks, torch.tensor([[1, 1, 1, 0]]), causal).int()[0, 0]
    assert got[1].tolist() == [0, 1, 0, 0, 1, 0, 0, 0] and got[3].tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    assert got[7].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_two_stream_logits_equal_a_naive_forward_of_each_block_on_its_clean_prefix():
    from unmask.train import TrainConfig, forward_logits, make_batch

    model = make_model(2, block_size=3)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(1, 100, (2, 14), generator=gen)
    prompt_lengths = torch.tensor([4, 2])
    cfg = TrainConfig(stage="sft", block_size=3, seq_len=14)
    batch = make_batch(clean, prompt_lengths, step=0, cfg=cfg, mask_token_id=MASK, generator=gen)
    assert batch.input_ids.shape == (2, 28) and bool(batch.masked.any())
    ours = forward_logits(model, batch)  # (B, T, V) raw: output i predicts token i + 1
    for row, origin in enumerate(prompt_lengths.tolist()):
        for b0 in range(origin, 14, 3):
            b1 = min(b0 + 3, 14)
            # the block as the decoder meets it: every earlier block clean, this one noisy, nothing after
            canvas = torch.cat([clean[row, :b0], batch.input_ids[row, b0:b1]])[None]
            naive = model(canvas, block_origin=origin)[0]
            torch.testing.assert_close(ours[row, b0 - 1:b1 - 1], naive[b0 - 1:b1 - 1], atol=1e-5, rtol=1e-5)


def test_block_diffusion_training_lowers_the_loss_and_saves_a_block_model(tmp_path):
    from test_train import config, cyclic_rows, params, tiny_model

    from unmask.train import TrainData, train

    rows = cyclic_rows()
    model = tiny_model()
    cfg = config(tmp_path, max_steps=40, eval_every=40, save_every=40, warmup_steps=5, block_size=4)
    result = train(cfg, model=model, data=TrainData(rows, rows))
    first = sum(r["loss"] for r in result.history[:5]) / 5
    last = sum(r["loss"] for r in result.history[-5:]) / 5
    assert last < 0.7 * first and model.config.block_size == 4
    # the run's checkpoint is a block-diffusion model that loads back and decodes with the exact decoder
    from unmask.checkpoint import load_generation_defaults, load_model

    directory = tmp_path / "run" / "checkpoint-0000040"
    loaded = load_model(directory)
    assert loaded.config.block_size == 4
    assert load_generation_defaults(directory).decoder == DecoderConfig(decoder="blocks", block_length=4)
    assert all(torch.equal(v, params(model)[k]) for k, v in params(loaded).items())
    out = decode(loaded, rows.ids[:2, :5], config=DecodeConfig(max_new_tokens=8, steps=8))
    assert out.stats.forward_passes == 8 and not bool((out.generated == loaded.config.mask_token_id).any())


def test_a_full_attention_diffusion_model_becomes_a_block_model_through_unmask_train(tmp_path, tokenizer):
    import json

    import unmask
    from unmask.checkpoint import save_model
    from unmask.train import TrainConfig, train

    s = tokenizer.special
    base = make_model(3, vocab_size=tokenizer.vocab_size, mask_token_id=s.mask, pad_token_id=s.pad,
                      eos_token_id=s.eos, bos_token_id=s.bos)
    save_model(base, tmp_path / "full", tokenizer=tokenizer)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"def f{i}(x):\n    return x + {i}\n"}) + "\n" for i in range(30)))
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), data=str(corpus), init_from=str(tmp_path / "full"), seq_len=24,
                      batch_size=2, max_steps=2, block_size=4, eval_every=2, save_every=2, warmup_steps=1,
                      progress=False, sample_prompts=1, sample_tokens=4)
    train(cfg)
    saved = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert saved["block_size"] == 4
    model, tok = unmask.load(tmp_path / "run" / "checkpoint-0000002")
    assert model.config.block_size == 4
    out = decode(model, torch.tensor([tok.encode("def f(x):")]), config=DecodeConfig(max_new_tokens=8, steps=4))
    assert out.stats.forward_passes == 4
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 1  # the validation's sample decoded through the exact block decoder
