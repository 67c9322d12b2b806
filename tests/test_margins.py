"""The decision-margin helper (tests/margins.py) catches near-ties, misaligned records and exact ties."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MASK_ID, make_model
from margins import (
    MARGIN,
    Decision,
    Recorder,
    Rule,
    StepLog,
    assert_margin,
    assert_same_decisions,
    decision_margins,
    decode_with_margin,
    smallest_margin,
)

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding import decode

V = 128  # the conftest models' vocabulary; MASK_ID = 127 is excluded from every decision


def confident(c: float, token: int) -> torch.Tensor:
    """(V,) logits whose softmax over the non-mask tokens puts probability ``c`` on ``token``, the rest evenly."""
    row = torch.zeros(V, dtype=torch.float64)
    row[token] = math.log(c * (V - 2) / (1 - c))  # e^L / (e^L + 126) = c
    row[MASK_ID] = -1e9
    return row


def decision(confs: list[float], committed: list[bool], tokens: list[int] | None = None) -> Decision:
    tokens = tokens or [t + 1 for t in range(len(confs))]
    return Decision(torch.stack([confident(c, t) for c, t in zip(confs, tokens)]).float(),
                    torch.tensor(committed), torch.tensor(tokens))


def test_a_near_tie_in_the_commit_order_is_caught():
    rule = Rule(confidence="maskgit_plus")
    clear = decision([0.60, 0.40, 0.30], [True, False, False])
    assert decision_margins(clear, rule)[1].value == pytest.approx(0.20, abs=1e-5)
    assert assert_margin([clear], rule).value == pytest.approx(0.20, abs=1e-5)
    near = decision([0.600001, 0.60, 0.30], [True, False, False])  # the runner-up is 1e-6 behind
    assert 0 < decision_margins(near, rule)[1].value < 1e-5
    with pytest.raises(AssertionError, match="commit margin .* near-tie"):
        assert_margin([clear, near], rule)


def test_a_near_tie_between_two_tokens_is_caught():
    rule = Rule(confidence="entropy")
    d = decision([0.6, 0.3], [True, False])
    logits = d.logits.clone()
    logits[0, 50] = logits[0, 1] - 1e-6  # position 0's runner-up token is 1e-6 below the committed one
    near = Decision(logits, d.committed, d.tokens)
    token, *_ = decision_margins(near, rule)
    assert token.kind == "token" and 0 < token.value < 1e-5
    with pytest.raises(AssertionError, match="token margin"):
        assert_margin([near], rule)
    logits[1, 50] = logits[1, 2] + 5.0  # an uncommitted position's token is no decision: it stays masked
    assert decision_margins(Decision(logits, d.committed, d.tokens), rule)[0].value == token.value


def test_records_the_logits_do_not_explain_have_a_negative_margin():
    rule = Rule(confidence="maskgit_plus")
    assert decision_margins(decision([0.3, 0.6], [True, False]), rule)[1].value < 0  # the less confident one
    wrong_token = decision([0.6, 0.3], [True, False], tokens=[1, 2])
    wrong_token = Decision(wrong_token.logits, wrong_token.committed, torch.tensor([7, 2]))
    assert decision_margins(wrong_token, rule)[0].value == -math.inf
    # a step that commits nothing, or (origin) draws its commits at random, decides no order
    assert decision_margins(decision([0.5, 0.5], [False, False]), rule)[1].value == math.inf
    assert decision_margins(decision([0.5, 0.5], [True, False]), Rule(select="random"))[1].value == math.inf


def test_threshold_and_factor_margins_by_hand():
    threshold = Rule(select="threshold", threshold=0.5)
    assert decision_margins(decision([0.9, 0.55, 0.2], [True, True, False]), threshold)[1].value == \
        pytest.approx(0.05, abs=1e-5)  # 0.55 is 0.05 above the threshold
    assert decision_margins(decision([0.5000001, 0.2], [True, False]), threshold)[1].value < 1e-5
    # none reaches it: the best is committed; 0.45 vs 0.40 (0.05) and 0.45 vs the threshold (0.05)
    assert decision_margins(decision([0.45, 0.40], [True, False]), threshold)[1].value == pytest.approx(0.05, abs=1e-5)
    assert decision_margins(decision([0.55, 0.40], [False, True]), threshold)[1].value < 0
    # factor 1, sorted .95 .91 .5 .2: ranks 2 (.91 > 1 - 1/3) and 3 (.5 < 1 - 1/4) decide; the boundary .41
    factor = Rule(select="factor", factor=1.0)
    got = decision_margins(decision([0.95, 0.20, 0.91, 0.50], [True, False, True, False]), factor)[1].value
    assert got == pytest.approx(min(0.91 - 2 / 3, 0.75 - 0.50, 0.91 - 0.50), abs=1e-5)


def test_filter_margins_by_hand():
    probs = torch.full((1, V), 1e-12)
    probs[0, [1, 2, 3]] = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log()
    two = Decision(logits.repeat(2, 1), torch.tensor([True, False]), torch.tensor([1, 1]))
    # the mass before the 2nd and 3rd token is 0.5 and 0.8: top-p 0.7 is 0.1 from keeping or dropping one
    assert decision_margins(two, Rule(top_p=0.7))[2].value == pytest.approx(0.1, abs=1e-5)
    assert decision_margins(two, Rule(top_p=0.8))[2].value < 1e-5  # 0.8 is on the edge
    assert decision_margins(two, Rule())[2].value == math.inf  # no filter, nothing to decide
    near_k = logits.clone()
    near_k[0, 4] = near_k[0, 2] - 1e-5  # the 2nd and 3rd logits 1e-5 apart
    assert decision_margins(Decision(near_k.repeat(2, 1), two.committed, two.tokens), Rule(top_k=2))[2].value < 2e-5
    assert decision_margins(two, Rule(top_k=2))[2].value == pytest.approx(math.log(0.3 / 0.2), abs=1e-5)
    # where nothing is ranked (every candidate committed) the filter changed no decision
    every = Decision(two.logits, torch.tensor([True, True]), two.tokens)
    assert decision_margins(every, Rule(top_p=0.8))[2].value == math.inf


class Staircase(torch.nn.Module):
    """Hand-built logits: position j predicts token j % 100 + 1 with logit ``base + slope·j`` (0 elsewhere),
    whatever the input, so confidences rise with the position; a slope near 0 makes the positions tie."""

    def __init__(self, slope: float, base: float = 4.0) -> None:
        super().__init__()
        self.config = make_model(0).config
        self.slope, self.base = slope, base
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_position=0):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, V)
        pos = torch.arange(t)
        logits[:, pos, pos % 100 + 1] = self.base + self.slope * pos.float()
        return logits


@pytest.mark.parametrize("decoder", [DecoderConfig(), DecoderConfig(decoder="blocks", block_length=4),
                                     DecoderConfig(decoder="parallel", block_length=4, threshold=0.9)], ids=str)
@pytest.mark.parametrize("tie_slope", [0.0, 1e-5])
def test_recorded_decodes_pass_with_a_margin_and_fail_on_a_tie(decoder, tie_slope):
    prompt = torch.tensor([[5, 6, 7]])
    config = DecodeConfig(max_new_tokens=8, steps=8, alg="maskgit_plus")
    model = Staircase(0.5)
    with Recorder(model, decoder) as rec:
        result = decode(model, prompt, config=config, decoder=decoder, on_step=rec.on_step)
    decisions = rec.decisions()
    # without on_step events the commits are read off the successive canvases: the same decisions
    with Recorder(model, decoder) as bare:
        decode(model, prompt, config=config, decoder=decoder)
    assert [(d.step, d.committed.tolist(), d.tokens.tolist()) for d in bare.decisions(result.sequences)] == \
        [(d.step, d.committed.tolist(), d.tokens.tolist()) for d in decisions]
    # one decision per step (one row); together they committed every position exactly once
    assert [d.step for d in decisions] == list(range(result.stats.forward_passes))
    assert sum(int(d.committed.sum()) for d in decisions) == 8
    assert smallest_margin(decisions, Rule.of(config, decoder)).value >= MARGIN
    decode_with_margin(Staircase(0.5), prompt, config=config, decoder=decoder)
    # every position (nearly) equally confident: an exact tie, and confidences ~2e-6 apart
    with pytest.raises(AssertionError, match="commit margin"):
        decode_with_margin(Staircase(tie_slope), prompt, config=config, decoder=decoder)


@pytest.mark.parametrize("decoder", [DecoderConfig(decoder="blocks", block_length=4, cache="prefix"),
                                     DecoderConfig(decoder="parallel", block_length=4, threshold=0.5, cache="dual")],
                         ids=str)
def test_cached_decoders_are_recorded_through_the_probe(decoder):
    # The logits of a cached step are not a full forward's: the probe records the ones the step read, so the
    # record explains every commit (a margin >= 0; a misaligned record would be negative).
    config = DecodeConfig(max_new_tokens=12, steps=12, alg="entropy")
    model = make_model(8, sharpen=40.0)
    with Recorder(model, decoder) as rec:
        decode(model, torch.tensor([[5, 17, 33]]), config=config, decoder=decoder, on_step=rec.on_step,
               probe=rec.probe)
    decisions = rec.decisions()
    assert len(decisions) >= 3 and smallest_margin(decisions, Rule.of(config, decoder)).value > 0
    with pytest.raises(ValueError, match="probe"), Recorder(model, decoder) as bare:
        result = decode(model, torch.tensor([[5, 17, 33]]), config=config, decoder=decoder)
        bare.decisions(result.sequences)


def test_sampled_decodes_have_no_margin():
    with pytest.raises(ValueError, match="sampled"):
        Rule.of(DecodeConfig(temperature=0.5))
    with pytest.raises(ValueError, match="lossless"):
        Recorder(make_model(0), DecoderConfig(lossless=True))


def test_same_decisions_may_part_only_at_a_near_tie():
    prompt = torch.tensor([[5, 6, 7]])
    config = DecodeConfig(max_new_tokens=6, steps=6, alg="maskgit_plus")
    rule = Rule.of(config)

    def compare(ref_model, other_model):
        with Recorder(ref_model) as rec:
            decode(ref_model, prompt, config=config, on_step=rec.on_step)
        other = StepLog()
        decode(other_model, prompt, config=config, on_step=other.on_step)
        return assert_same_decisions(rec, other, rule)

    assert compare(Staircase(0.5), Staircase(0.5)) is True  # the same decisions to the end
    # confidences 1e-5 apart rank the other way: the rows part at the first ranked step, which was a near-tie
    assert compare(Staircase(1e-5), Staircase(-1e-5)) is False
    with pytest.raises(AssertionError, match="not a near-tie"):  # a clear decision that went the other way
        compare(Staircase(0.5), Staircase(-0.5))
