"""Tests for unmask.diffusion: time sampling, forward masking, the ELBO loss, SFT layout, annealing."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unmask.diffusion import (
    adaptation_spans,
    annealed_attention_mask,
    attention_anneal_fraction,
    block_spans,
    diffusion_loss,
    forward_mask,
    mask_probability,
    sample_t,
    sft_collate,
    sft_maskable,
    shift_logits,
)

MASK = 99


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------- sample_t


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 33), seed=st.integers(0, 2**31 - 1), eps=st.sampled_from([0.0, 1e-3, 0.1]))
def test_sample_t_range_and_antithetic_pairs(batch: int, seed: int, eps: float) -> None:
    t = sample_t(batch, generator=gen(seed), eps=eps, method="antithetic")
    assert t.shape == (batch,)
    assert bool((t >= eps - 1e-7).all()) and bool((t <= 1.0 + 1e-7).all()) and bool((t > 0).all())
    v = 1.0 - (t - eps) / (1.0 - eps)  # invert the affine map back to the base draw
    pairs = v[: 2 * (batch // 2)].reshape(-1, 2)
    torch.testing.assert_close(pairs.sum(dim=1), torch.ones(batch // 2), atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 33), seed=st.integers(0, 2**31 - 1))
def test_sample_t_stratified_one_per_bin(batch: int, seed: int) -> None:
    eps = 1e-3
    t = sample_t(batch, generator=gen(seed), eps=eps, method="stratified")
    v = 1.0 - (t - eps) / (1.0 - eps)
    bins = torch.floor(v * batch).clamp(max=batch - 1).long()
    assert sorted(bins.tolist()) == list(range(batch))


def test_sample_t_stratified_is_shuffled_and_reproducible() -> None:
    a = sample_t(64, generator=gen(3), method="stratified")
    b = sample_t(64, generator=gen(3), method="stratified")
    assert torch.equal(a, b)
    # Shuffled: not sorted in either direction (probability of that by chance is 2/64!).
    assert not torch.equal(a, a.sort().values) and not torch.equal(a, a.sort(descending=True).values)


def test_sample_t_uniform_marginal() -> None:
    for method in ("uniform", "antithetic", "stratified"):
        t = sample_t(20000, generator=gen(1), eps=0.0, method=method)
        # U(0,1] has mean 1/2, variance 1/12; 20000 draws: mean s.e. ~0.002.
        assert abs(t.mean().item() - 0.5) < 0.01, method
        assert abs(t.var().item() - 1 / 12) < 0.005, method


def test_sample_t_bad_input() -> None:
    with pytest.raises(ValueError, match="method"):
        sample_t(4, generator=gen(0), method="sobol")
    with pytest.raises(ValueError, match="batch"):
        sample_t(0, generator=gen(0))
    with pytest.raises(TypeError, match="generator"):
        sample_t(4, generator=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eps"):
        sample_t(4, generator=gen(0), eps=1.5)


# ---------------------------------------------------------------------------- forward_mask


def test_mask_probability_values() -> None:
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(mask_probability(t, 1e-3), torch.tensor([1e-3, 0.5005, 1.0]))
    torch.testing.assert_close(mask_probability(t, 0.0), t)


def test_forward_mask_frequencies_follow_p_t() -> None:
    T = 20000
    t = torch.tensor([0.05, 0.3, 0.7, 1.0])
    ids = torch.randint(0, 50, (4, T), generator=gen(0))
    maskable = torch.ones(4, T, dtype=torch.bool)
    noisy, masked = forward_mask(ids, t, maskable=maskable, generator=gen(1), mask_token_id=MASK, eps=1e-3)
    p = mask_probability(t, 1e-3)
    freq = masked.float().mean(dim=1)
    sigma = torch.sqrt(p * (1 - p) / T)
    # Generous: 6 standard errors (or an absolute 1e-3 floor for p = 1).
    assert bool(((freq - p).abs() <= 6 * sigma + 1e-3).all()), (freq, p)
    assert bool(masked[3].all())  # p(1) = 1 exactly
    assert bool((noisy[masked] == MASK).all())
    assert torch.equal(noisy[~masked], ids[~masked])


def test_forward_mask_never_touches_prompt_and_is_reproducible() -> None:
    prompts, responses = [[1, 2, 3], [4, 5], [6]], [[7, 8], [9], [10, 11, 12]]
    ids, maskable, plens = sft_collate(prompts, responses, total_length=8, pad_id=0)
    t = torch.ones(3)  # p = 1: every maskable position is masked
    noisy, masked = forward_mask(ids, t, maskable=maskable, generator=gen(5), mask_token_id=MASK)
    for b, n in enumerate(plens.tolist()):
        assert torch.equal(noisy[b, :n], ids[b, :n])  # prompt intact
        assert bool((noisy[b, n:] == MASK).all())  # response and its pads all masked
    tt = torch.full((3,), 0.5)
    a = forward_mask(ids, tt, maskable=maskable, generator=gen(7), mask_token_id=MASK)
    b_ = forward_mask(ids, tt, maskable=maskable, generator=gen(7), mask_token_id=MASK)
    assert torch.equal(a[0], b_[0]) and torch.equal(a[1], b_[1])
    assert not bool((a[1] & ~maskable).any())


def test_forward_mask_bad_input() -> None:
    ids = torch.zeros(2, 4, dtype=torch.long)
    ok = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="t must lie"):
        forward_mask(ids, torch.tensor([0.0, 0.5]), maskable=ok, generator=gen(0), mask_token_id=MASK)
    with pytest.raises(ValueError, match="t must have shape"):
        forward_mask(ids, torch.tensor([0.5]), maskable=ok, generator=gen(0), mask_token_id=MASK)
    with pytest.raises(TypeError, match="bool"):
        forward_mask(ids, torch.tensor([0.5, 0.5]), maskable=ok.long(), generator=gen(0), mask_token_id=MASK)
    with pytest.raises(ValueError, match="shape"):
        forward_mask(ids, torch.tensor([0.5, 0.5]), maskable=ok[:, :3], generator=gen(0), mask_token_id=MASK)


# ---------------------------------------------------------------------------- diffusion_loss


def test_loss_hand_computed() -> None:
    # V = 2. Raw output i predicts token i+1, so aligned position 1 uses raw row 0, position 2 raw row 1.
    ln3 = math.log(3.0)
    raw = torch.tensor([[[0.0, 0.0], [ln3, 0.0], [0.0, ln3]]])  # (1, 3, 2)
    targets = torch.tensor([[0, 1, 0]])
    masked = torch.tensor([[False, True, True]])
    t = torch.tensor([0.5])
    # pos 1: softmax([0, 0])[1] = 1/2 -> CE ln 2; pos 2: softmax([ln3, 0])[0] = 3/4 -> CE ln(4/3).
    # Weighted sum with eps = 0: (ln 2 + ln 4/3) / 0.5 = 2 ln(8/3).
    s = 2 * math.log(8 / 3)
    loss, stats = diffusion_loss(raw, targets, masked, t, eps=0.0)  # all 3 positions maskable
    assert loss.item() == pytest.approx(s / 3, rel=1e-6)
    assert stats["masked_tokens"].item() == 2
    assert stats["ce"].item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    maskable = torch.tensor([[False, True, True]])
    loss, _ = diffusion_loss(raw, targets, masked, t, maskable=maskable, eps=0.0)
    assert loss.item() == pytest.approx(s / 2, rel=1e-6)
    loss, _ = diffusion_loss(raw, targets, masked, t, maskable=maskable, eps=0.0, weight="none")
    assert loss.item() == pytest.approx(s / 2 * 0.5, rel=1e-6)
    loss, _ = diffusion_loss(raw, targets, masked, t, eps=0.1, normalizer="batch")  # p = 0.9*0.5 + 0.1
    assert loss.item() == pytest.approx(s * 0.5 / 0.55 / 3, rel=1e-6)


def _naive_loss(raw, targets, masked, maskable, t, eps, normalizer):
    """Plain-loop reference: explicit shift, explicit softmax."""
    B, T, _ = raw.shape
    per_seq, counts = [], []
    for b in range(B):
        p = (1 - eps) * t[b].item() + eps
        s = 0.0
        for j in range(T):
            if masked[b, j]:
                row = raw[b, max(j - 1, 0)].double()
                s += -(row[targets[b, j]] - torch.log(torch.exp(row).sum())).item() / p
        per_seq.append(s)
        counts.append(int(maskable[b].sum()))
    if normalizer == "tokens":
        return sum(per_seq) / sum(counts)
    if normalizer == "sequence":
        return sum(s / c for s, c in zip(per_seq, counts)) / B
    return sum(per_seq) / (B * T)


@pytest.mark.parametrize("normalizer", ["tokens", "sequence", "batch"])
def test_loss_matches_naive_reference(normalizer: str) -> None:
    g = gen(11)
    B, T, V = 3, 7, 5
    raw = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    maskable = sft_maskable([2, 3, 1], T)
    t = torch.tensor([0.2, 0.6, 0.9])
    _, masked = forward_mask(targets, t, maskable=maskable, generator=g, mask_token_id=MASK)
    assert masked.any()
    loss, _ = diffusion_loss(raw, targets, masked, t, maskable=maskable, normalizer=normalizer)
    expected = _naive_loss(raw, targets, masked, maskable, t, 1e-3, normalizer)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_inv_p_weight_is_unbiased_for_full_ce() -> None:
    # E_mask[ sum_n masked_n / p * CE_n ] = sum over maskable CE_n  (why 1/p(t) is the right weight).
    R, T, V = 4000, 6, 4
    raw = torch.randn(1, T, V, generator=gen(2)).expand(R, T, V)
    targets = torch.randint(0, V, (1, T), generator=gen(3)).expand(R, T)
    maskable = sft_maskable([2] * R, T)
    t = torch.full((R,), 0.3)
    _, masked = forward_mask(targets, t, maskable=maskable, generator=gen(4), mask_token_id=MASK)
    loss, _ = diffusion_loss(raw, targets, masked, t, maskable=maskable, normalizer="tokens")
    full = -torch.log_softmax(shift_logits(raw[:1]), -1).gather(-1, targets[:1, :, None])[0, :, 0]
    expected = full[2:].sum().item() / (T - 2)  # mean CE over maskable tokens with everything seen
    assert loss.item() == pytest.approx(expected, rel=0.05)


def test_loss_is_differentiable_and_validates() -> None:
    raw = torch.randn(2, 4, 3, requires_grad=True)
    targets = torch.zeros(2, 4, dtype=torch.long)
    masked = torch.tensor([[False, True, False, True], [False, False, True, True]])
    loss, _ = diffusion_loss(raw, targets, masked, torch.tensor([0.5, 0.5]))
    loss.backward()
    assert raw.grad is not None and raw.grad[:, -1].abs().sum() == 0  # last raw output predicts nothing
    with pytest.raises(ValueError, match="normalizer"):
        diffusion_loss(raw, targets, masked, torch.tensor([0.5, 0.5]), normalizer="masked")
    with pytest.raises(ValueError, match="outside maskable"):
        diffusion_loss(raw, targets, masked, torch.tensor([0.5, 0.5]), maskable=torch.zeros_like(masked))


# ---------------------------------------------------------------------------- SFT layout


def test_sft_collate_layout() -> None:
    ids, maskable, plens = sft_collate([[5, 6], [7]], [[8, 9], [10, 11, 12]], total_length=6, pad_id=0)
    assert ids.tolist() == [[5, 6, 8, 9, 0, 0], [7, 10, 11, 12, 0, 0]]
    assert maskable.int().tolist() == [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert plens.tolist() == [2, 1]
    assert torch.equal(sft_maskable(plens, 6), maskable)


def test_sft_collate_overflow() -> None:
    with pytest.raises(ValueError, match="exceed total_length"):
        sft_collate([[1, 2]], [[3, 4, 5]], total_length=4, pad_id=0)
    ids, _, _ = sft_collate([[1, 2]], [[3, 4, 5]], total_length=4, pad_id=0, truncate=True)
    assert ids.tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match="prompt length"):
        sft_collate([[1, 2, 3, 4]], [[5]], total_length=4, pad_id=0)
    with pytest.raises(ValueError, match="prompt length"):
        sft_collate([[]], [[5]], total_length=4, pad_id=0)
    with pytest.raises(ValueError, match="prompts"):
        sft_collate([[1]], [], total_length=4, pad_id=0)


# ---------------------------------------------------------------------------- attention annealing


def test_anneal_fraction() -> None:
    assert attention_anneal_fraction(0, 100) == 0.0
    assert attention_anneal_fraction(25, 100) == 0.25
    assert attention_anneal_fraction(100, 100) == 1.0
    assert attention_anneal_fraction(500, 100) == 1.0
    assert attention_anneal_fraction(0, 0) == 1.0
    with pytest.raises(ValueError, match="step"):
        attention_anneal_fraction(-1, 10)


@pytest.mark.parametrize("seed", [None, 0, 1])
def test_annealed_mask_endpoints_and_monotone(seed: int | None) -> None:
    T = 9

    def mask(f: float) -> torch.Tensor:
        return annealed_attention_mask(T, f, generator=None if seed is None else gen(seed))

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(mask(0.0), causal)
    assert bool(mask(1.0).all())
    prev = mask(0.0)
    for k in range(1, 41):
        cur = mask(k / 40)
        assert bool((prev & ~cur).sum() == 0)  # nothing ever closes again
        assert bool((causal & ~cur).sum() == 0)  # the causal part is always open
        prev = cur
    assert mask(0.5).sum() > causal.sum()  # strictly between the endpoints


def test_annealed_mask_window() -> None:
    m = annealed_attention_mask(5, 0.5)  # window ceil(0.5 * 4) = 2
    expected = torch.tensor([[1 if j <= i + 2 else 0 for j in range(5)] for i in range(5)], dtype=torch.bool)
    assert torch.equal(m, expected)
    with pytest.raises(ValueError, match="fraction"):
        annealed_attention_mask(5, 1.5)


# ---------------------------------------------------------------------------- stage-1 adaptation noise


def test_adaptation_spans() -> None:
    L = 10
    prefix, keep = adaptation_spans(20000, L, generator=gen(0), prefix_prob=0.2, truncate_prob=0.1)
    assert abs((prefix > 0).float().mean().item() - 0.2) < 0.02
    assert abs((keep < L).float().mean().item() - 0.1) < 0.02
    assert bool((prefix >= 0).all()) and bool((keep <= L).all()) and bool((keep >= 2).all())
    assert bool((prefix < keep).all())  # at least one maskable position always remains
    lengths = prefix[prefix > 0]
    assert set(lengths.tolist()) == set(range(1, L))  # every clean-prefix length occurs
    assert set(keep[keep < L].tolist()) == set(range(2, L))
    p0, k0 = adaptation_spans(50, L, generator=gen(1), prefix_prob=0.0, truncate_prob=0.0)
    assert bool((p0 == 0).all()) and bool((k0 == L).all())
    with pytest.raises(ValueError, match="prefix_prob"):
        adaptation_spans(2, L, generator=gen(0), prefix_prob=2.0)


# ---------------------------------------------------------------------------- semi-AR block spans


def test_block_spans_are_aligned_blocks_drawn_uniformly() -> None:
    # region [3, 14): blocks of 4 aligned at 3 -> [3, 7), [7, 11), [11, 14); each drawn a third of the time
    R = 6000
    lo, hi, n = block_spans(torch.full((R,), 3), torch.full((R,), 14), 4, generator=gen(0))
    assert set(zip(lo.tolist(), hi.tolist())) == {(3, 7), (7, 11), (11, 14)}
    assert (n == 3).all()
    for start in (3, 7, 11):
        assert (lo == start).float().mean().item() == pytest.approx(1 / 3, abs=0.03)
    lo1, hi1, n1 = block_spans(torch.tensor([0, 5]), torch.tensor([1, 13]), 8, generator=gen(1))
    assert lo1.tolist() == [0, 5] and hi1.tolist() == [1, 13] and n1.tolist() == [1, 1]


def test_block_spans_weighted_block_loss_is_unbiased_for_the_region() -> None:
    # n * (1/p) * CE over one block's masked tokens estimates the CE summed over the whole region.
    R, T, V = 6000, 12, 5
    raw = torch.randn(1, T, V, generator=gen(5)).expand(R, T, V)
    targets = torch.randint(0, V, (1, T), generator=gen(6)).expand(R, T)
    lo, hi, n = block_spans(torch.full((R,), 2), torch.full((R,), 11), 4, generator=gen(7))
    pos = torch.arange(T)[None]
    block = (pos >= lo[:, None]) & (pos < hi[:, None])
    t = torch.full((R,), 0.4)
    _, masked = forward_mask(targets, t, maskable=block, generator=gen(8), mask_token_id=MASK)
    region = (pos >= 2) & (pos < 11)
    loss, _ = diffusion_loss(raw, targets, masked, t, maskable=region.expand(R, T), row_weight=n.float())
    full = -torch.log_softmax(shift_logits(raw[:1]), -1).gather(-1, targets[:1, :, None])[0, :, 0]
    assert loss.item() == pytest.approx(full[2:11].mean().item(), rel=0.05)


def test_block_spans_bad_input() -> None:
    with pytest.raises(ValueError, match="block_length"):
        block_spans(torch.tensor([0]), torch.tensor([4]), 0, generator=gen(0))
    with pytest.raises(ValueError, match="start < end"):
        block_spans(torch.tensor([4]), torch.tensor([4]), 2, generator=gen(0))
    with pytest.raises(ValueError, match="row_weight"):
        diffusion_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool),
                       torch.full((2,), 0.5), row_weight=torch.ones(3))
