"""The ELBO estimate of log p(continuation | context) against independent computations: a naive per-sample loop
over the same draws, and the exact expectation from enumerating every mask of a 3-token continuation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import MASK_ID, make_model

from unmask.likelihood import continuation_elbo, elbo_plan, greedy_reproduces

CONTEXT = [5, 9, 14, 3, 60]
CONTINUATION = [7, 21, 40]
EPS = 1e-3


@pytest.fixture(scope="module")
def model():
    return make_model(3, sharpen=4.0)


def logp_by_hand(model, canvas: list[int], positions) -> list[float]:
    """log p(true token at i | canvas) at each position i, from the raw output at i - 1 (the shift, written out
    here)."""
    clean = CONTEXT + CONTINUATION
    with torch.no_grad():
        logits = model(torch.tensor([canvas]))[0].double()  # (S, V)
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[i - 1, clean[i]]) for i in positions]


def naive_estimate(model, t, masked) -> float:
    """One forward per sample, the weight 1 / p(t) with p(t) = (1 - eps) t + eps written out."""
    values = []
    for tk, row in zip(t.tolist(), masked.tolist()):
        canvas = CONTEXT + [MASK_ID if m else x for x, m in zip(CONTINUATION, row)]
        hidden = [len(CONTEXT) + n for n, m in enumerate(row) if m]
        values.append(sum(logp_by_hand(model, canvas, hidden)) / ((1 - EPS) * tk + EPS))
    return sum(values) / len(values)


def test_estimate_equals_a_naive_loop_over_the_same_draws(model):
    t, masked = elbo_plan(len(CONTINUATION), 24, generator=torch.Generator().manual_seed(5), eps=EPS)
    expected = naive_estimate(model, t, masked)
    for batch in (1, 7, 24):
        got = continuation_elbo(model, CONTEXT, CONTINUATION, mc_num=24, mc_batch_size=batch, eps=EPS,
                                generator=torch.Generator().manual_seed(5))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def exact_moments(model) -> tuple[float, float]:
    """E[X] and E[X²] of one sample X of the estimator: every non-empty mask S of the continuation (an empty one
    scores 0), weighted by p^|S| (1 - p)^(L - |S|), integrated over t ~ U(eps, 1) numerically."""
    L, start = len(CONTINUATION), len(CONTEXT)
    t = torch.linspace(EPS, 1.0, 200_001, dtype=torch.float64)
    p = (1 - EPS) * t + EPS
    first = torch.zeros_like(t)
    second = torch.zeros_like(t)
    for size in range(1, L + 1):
        for subset in itertools.combinations(range(L), size):
            canvas = CONTEXT + [MASK_ID if n in subset else x for n, x in enumerate(CONTINUATION)]
            score = sum(logp_by_hand(model, canvas, [start + n for n in subset]))  # A_S
            chance = p ** size * (1 - p) ** (L - size)
            first += chance * score / p
            second += chance * (score / p) ** 2
    width = 1.0 - EPS  # t is uniform: the mean over [eps, 1] is the integral divided by its width
    return float(torch.trapezoid(first, t)) / width, float(torch.trapezoid(second, t)) / width


def test_estimate_converges_to_the_exact_expectation(model):
    mean, square = exact_moments(model)
    n = 4000
    stderr = math.sqrt((square - mean ** 2) / n)  # independent draws; stratified times only lower it
    got = continuation_elbo(model, CONTEXT, CONTINUATION, mc_num=n, mc_batch_size=1000, eps=EPS,
                            generator=torch.Generator().manual_seed(0))
    assert mean < 0
    assert abs(got - mean) < 4 * stderr, (got, mean, stderr)
    assert stderr < 0.05 * abs(mean)  # the check has teeth: the tolerance is a small fraction of the value


def test_estimate_is_reproducible_and_an_empty_continuation_scores_zero(model):
    def run(seed):
        return continuation_elbo(model, CONTEXT, CONTINUATION, mc_num=8, generator=torch.Generator().manual_seed(seed))

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert continuation_elbo(model, CONTEXT, [], generator=torch.Generator()) == 0.0
    with pytest.raises(ValueError, match="at least one token"):
        continuation_elbo(model, [], CONTINUATION, generator=torch.Generator())
    with pytest.raises(ValueError, match="mc_num"):
        continuation_elbo(model, CONTEXT, CONTINUATION, mc_num=0, generator=torch.Generator())


def test_greedy_means_one_shot_argmax_of_the_fully_masked_continuation(model):
    canvas = CONTEXT + [MASK_ID] * 3
    with torch.no_grad():
        logits = model(torch.tensor([canvas]))[0]
    greedy = [int(logits[i - 1].argmax()) for i in range(len(CONTEXT), len(canvas))]
    assert greedy_reproduces(model, CONTEXT, greedy)
    changed = [greedy[0], greedy[1], (greedy[2] + 1) % MASK_ID]
    assert not greedy_reproduces(model, CONTEXT, changed)
    assert greedy_reproduces(model, CONTEXT, [])
