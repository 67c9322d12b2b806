"""Revising decoders (``decoding.revise``, docs/sampler.md "Revising committed tokens"): the selection rules by hand;
a budget of 0 is the reference sampler bit for bit; budgets, the schedule and the forward count hold; a planted
model makes both mechanisms change exactly the tokens an independent reading predicts; fixed text of an infill
canvas is never touched; traces record revisions, survive JSON and give AR-ness an order without repeats; the
options round-trip through generation_config.json, the CLI flags and the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import MASK_ID, make_model

from unmask.analysis.arness import arness_profile, flatten_order
from unmask.analysis.sweep import analyse_trace
from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults, check_pairing, revision_steps
from unmask.decoding import decode, decode_canvas
from unmask.decoding.dispatch import decode_stream
from unmask.decoding.revise import (
    edit_choices,
    least_confident,
    remask_schedule,
    token_probs,
)
from unmask.decoding.trace import DecodeTrace, StepRecord
from unmask.errors import ConfigError

A, B = 40, 50  # the planted model's draft token and the token it turns to
SHIPPED = Path(__file__).resolve().parents[1] / "models" / "unmask-small"


class PlantedModel(torch.nn.Module):
    """Hand-built logits (aligned, then un-shifted so the decoders' ``shift_logits`` lines them up again):
    - a masked position predicts A while its row has more than ``few`` masks, B once it has ``few`` or fewer;
    - a visible A is doubted: B gets logit 8, A 0 (p(A) ~ 3e-4, p(B) ~ 0.96);
    - any other visible token predicts itself (logit 8)."""

    def __init__(self, few: int) -> None:
        super().__init__()
        self.config = make_model(0).config
        self.few = few
        self.weight = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_position=0):
        masked = input_ids == MASK_ID  # (B, T)
        aligned = torch.zeros(*input_ids.shape, self.config.vocab_size)  # (B, T, V)
        crowded = masked.sum(-1, keepdim=True) > self.few  # (B, 1)
        aligned[..., A] += 8.0 * (masked & crowded)
        aligned[..., B] += 8.0 * ((masked & ~crowded) | (input_ids == A))
        others = ~masked & (input_ids != A)
        aligned.scatter_add_(-1, input_ids[..., None], 8.0 * others[..., None].float())
        return torch.cat([aligned[:, 1:], aligned[:, -1:]], dim=1)  # raw output j predicts token j + 1


@pytest.fixture(scope="module")
def tiny():
    return make_model(3, sharpen=6.0)


PROMPT = torch.tensor([[5, 9, 14, 2]])
PADDED = (torch.tensor([[0, 0, 5, 9], [7, 3, 11, 6]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))


# ----------------------------------------------------------------------------------------------------------
# the selection rules, by hand


def test_remask_schedule_and_revision_steps_by_hand():
    assert remask_schedule(5, 2) == [2, 2, 1]
    assert remask_schedule(4, 2) == [2, 2]
    assert remask_schedule(0, 3) == []
    assert remask_schedule(2, 8) == [2]
    assert revision_steps(DecoderConfig(revise="remask", revise_budget=5, revise_per_step=2)) == 3
    assert revision_steps(DecoderConfig(revise="edit", revise_budget=0)) == 0
    assert revision_steps(DecoderConfig(revise_budget=9)) == 0  # no revision, no revision step


def test_least_confident_by_hand():
    conf = torch.tensor([[0.9, 0.2, 0.5, 0.2, 0.1],
                         [0.3, 0.3, 0.3, 0.3, 0.3]])
    cand = torch.tensor([[True, True, True, True, False],  # 0.1 is not a candidate (e.g. prompt)
                         [False, True, False, True, True]])
    picked = least_confident(conf, cand, torch.tensor([2, 5]))
    # row 0: the two 0.2s (columns 1 and 3); row 1: every candidate, fewer than 5 exist
    assert picked.tolist() == [[False, True, False, True, False], [False, True, False, True, True]]
    tie = least_confident(conf[1:], torch.ones(1, 5, dtype=torch.bool), torch.tensor([2]))
    assert tie.tolist() == [[True, True, False, False, False]]  # ties go to the leftmost
    assert not least_confident(conf, cand, torch.tensor([0, 0])).any()


def test_edit_choices_by_hand():
    p_token = torch.tensor([[0.05, 0.05, 0.5, 0.05, 0.01]])
    p_best = torch.tensor([[0.95, 0.92, 0.99, 0.5, 0.97]])
    cand = torch.tensor([[True, True, True, True, False]])
    # eligible: p < 0.1 and best > 0.9 -> columns 0 and 1 (2 is confident, 3 has no strong rival, 4 is no candidate)
    assert edit_choices(p_token, p_best, cand, 0.1, 0.9, torch.tensor([5])).tolist() == [
        [True, True, False, False, False]]
    # a budget of 1 keeps the most confident replacement (0.95 at column 0)
    assert edit_choices(p_token, p_best, cand, 0.1, 0.9, torch.tensor([1])).tolist() == [
        [True, False, False, False, False]]


def test_token_probs_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 5.0]]])  # (1, 1, 4); id 3 plays the mask token
    own, best, best_id = token_probs(logits, torch.tensor([[1]]), mask_token_id=3)
    z = 1 + torch.e + torch.e ** 2  # the mask token is out of the softmax
    assert own.item() == pytest.approx(torch.e / z, rel=1e-6)
    assert best_id.item() == 2 and best.item() == pytest.approx(torch.e ** 2 / z, rel=1e-6)
    assert logits[0, 0, 3].item() == 5.0  # the caller's logits are left alone


# ----------------------------------------------------------------------------------------------------------
# against the reference sampler


@pytest.mark.parametrize("revise", ["remask", "edit"])
@pytest.mark.parametrize("sampler", [
    dict(temperature=0.0, alg="entropy"),
    dict(temperature=0.8, alg="maskgit_plus", top_p=0.9),
    dict(temperature=1.0, alg="origin"),
    dict(temperature=0.5, alg="topk_margin", alg_temp=0.5, stop_last=True),
])
def test_budget_zero_is_the_reference_bit_for_bit(tiny, revise, sampler):
    config = DecodeConfig(max_new_tokens=8, steps=6, **sampler)
    ids, mask = PADDED
    ref = decode(tiny, ids, mask, config=config, seed=7, trace=True)
    out = decode(tiny, ids, mask, config=config, decoder=DecoderConfig(revise=revise, revise_budget=0), seed=7,
                 trace=True)
    assert torch.equal(out.sequences, ref.sequences)
    assert out.trace.to_json() == ref.trace.to_json()
    assert out.stats.forward_passes == 6 and out.stats.tokens_revised == 0


def test_remask_spends_its_budget_in_the_last_steps_and_ends_without_masks(tiny):
    config = DecodeConfig(max_new_tokens=8, steps=12, temperature=0.0)
    decoder = DecoderConfig(revise="remask", revise_budget=5, revise_per_step=2)  # 3 revision steps: 2, 2, 1
    ids, mask = PADDED
    out = decode(tiny, ids, mask, config=config, decoder=decoder, trace=True)
    assert out.stats.forward_passes == 12 and out.stats.tokens_revised == 10  # 5 per row
    assert not (out.sequences == MASK_ID).any()
    for row in range(2):
        revisions = out.trace.revisions(row)
        assert [sum(1 for s, *_ in revisions if s == step) for step in (9, 10, 11)] == [2, 2, 1]
        assert all(new is None for *_, new in revisions)  # re-masked, then committed again
        positions = [p for _, p, _, _ in revisions]
        assert len(set(positions)) == 5 and all(0 <= p < 8 for p in positions)  # each at most once, generated
        order = out.trace.order(row)
        assert sorted(p for step in order for p in step) == list(range(8))  # each position once: its final commit
        arness_profile(flatten_order(order), ks_local=(1,), ks_global=(1,))  # no "committed twice"
    # the draft is the reference sampler at steps - R = 9
    draft = decode(tiny, ids, mask, config=config.replace(steps=9), trace=True)
    assert out.trace.to_json()["steps"][0][:9] == draft.trace.to_json()["steps"][0]


def test_edit_respects_budget_and_per_step_quota(tiny):
    config = DecodeConfig(max_new_tokens=8, steps=10, temperature=0.0)
    decoder = DecoderConfig(revise="edit", revise_budget=3, revise_per_step=2, edit_low=0.45, edit_high=0.5)
    out = decode(tiny, PADDED[0], PADDED[1], config=config, decoder=decoder, trace=True)
    for row in range(2):
        steps = [s for s, *_ in out.trace.revisions(row)]
        assert len(steps) <= 3 and all(s in (8, 9) for s in steps)
        assert steps.count(8) <= 2 and steps.count(9) <= 1


@pytest.mark.parametrize("revise", ["remask", "edit"])
def test_a_planted_model_turned_confident_of_another_token_gets_it(revise):
    """Independent reading: the draft is the reference sampler at steps - R; then each revision step takes the
    two leftmost A tokens (all doubted equally, ties to the left) and the model, with at most two masks or
    reading a visible A, gives B. So the result is the draft with its first four A tokens turned to B."""
    model = PlantedModel(few=2)
    config = DecodeConfig(max_new_tokens=8, steps=10, temperature=0.0, alg="maskgit_plus")
    draft = decode(model, PROMPT, config=config.replace(steps=8)).generated[0].tolist()
    assert draft.count(A) >= 4
    expected = list(draft)
    for p in [i for i, t in enumerate(draft) if t == A][:4]:
        expected[p] = B
    decoder = DecoderConfig(revise=revise, revise_budget=4, revise_per_step=2)
    out = decode(model, PROMPT, config=config, decoder=decoder, trace=True)
    assert out.generated[0].tolist() == expected
    revisions = out.trace.revisions(0)
    assert len(revisions) == 4 and all(old == A for _, _, old, _ in revisions)
    assert all(new == (None if revise == "remask" else B) for *_, new in revisions)
    final = out.trace.final_assignments(0)
    assert {final[p + PROMPT.shape[1]][1] for _, p, _, _ in revisions} == {B}


@pytest.mark.parametrize("revise", ["remask", "edit"])
def test_fixed_text_of_an_infill_canvas_is_never_touched(tiny, revise):
    M = MASK_ID
    canvas = torch.tensor([[5, A, M, M, A, 9, M, M, M, A, 3]])  # fixed A tokens the planted model doubts
    fixed = canvas != M
    decoder = DecoderConfig(revise=revise, revise_budget=4, revise_per_step=2)
    for model in (PlantedModel(few=2), tiny):
        out = decode_canvas(model, canvas, config=DecodeConfig(steps=7, temperature=0.0), decoder=decoder, trace=True)
        assert torch.equal(out.sequences[fixed], canvas[fixed]) and not (out.sequences == M).any()
        assert all(canvas[0, p] == M for _, p, _, _ in out.trace.revisions(0))
    assert out.trace.revisions(0) or revise == "edit"  # remask always spends its budget


def test_logprobs_cover_edited_tokens():
    model = PlantedModel(few=2)
    config = DecodeConfig(max_new_tokens=8, steps=10, temperature=0.0)
    canvas = torch.cat([PROMPT, torch.full((1, 8), MASK_ID)], dim=1)
    stream = decode_stream(model, canvas, None, config=config, decoder=DecoderConfig(revise="edit", revise_budget=2),
                           region_start=4, mask_token_id=MASK_ID, logprobs=1)
    next(stream)
    assert not torch.is_inference_mode_enabled()  # the stream's inference mode stays inside it between steps
    last = list(stream)[-1]  # the one revision step: two edits, no commit
    assert int(last.revised.sum()) == 2 and not last.committed.any()
    assert last.logprobs.cols.tolist() == last.revised[0].nonzero(as_tuple=True)[0].tolist()
    # p(B) at a visible A: logit 8 against 126 zeros (V = 128 without the mask token)
    expected = 1 / (1 + 126 * torch.exp(torch.tensor(-8.0))).item()
    assert last.logprobs.chosen.exp().tolist() == pytest.approx([expected] * 2, rel=1e-5)


# ----------------------------------------------------------------------------------------------------------
# configuration, traces, CLI, server


def test_combinations_that_cannot_run_are_config_errors(tiny):
    with pytest.raises(ConfigError, match="needs --decoder reference"):
        DecoderConfig(decoder="blocks", revise="remask")
    with pytest.raises(ConfigError, match="without --lossless"):
        DecoderConfig(lossless=True, revise="edit")
    with pytest.raises(ConfigError, match="--no-early-stop"):
        DecoderConfig(early_stop=True, revise="remask")
    with pytest.raises(ConfigError, match="edit_low .* must be below edit_high"):
        DecoderConfig(revise="edit", edit_low=0.9, edit_high=0.5)
    with pytest.raises(ConfigError, match="revise_budget must be a non-negative integer"):
        DecoderConfig(revise_budget=-1)
    with pytest.raises(ConfigError, match="revise_per_step must be a positive integer"):
        DecoderConfig(revise_per_step=0)
    with pytest.raises(ConfigError, match="revise must be one of"):
        DecoderConfig(revise="rewrite")
    with pytest.raises(ConfigError, match="dream_compat"):
        check_pairing(DecodeConfig(dream_compat=True), DecoderConfig(revise="remask"))
    with pytest.raises(ConfigError, match="leaves no step to draft with"):
        decode(tiny, PROMPT, config=DecodeConfig(max_new_tokens=4, steps=8),
               decoder=DecoderConfig(revise="remask", revise_budget=16, revise_per_step=2))
    # a recommended blocks decoder with early stop: naming the reference decoder starts from its defaults
    defaults = GenerationDefaults(decoder=DecoderConfig(decoder="blocks", early_stop=True))
    _, chosen = defaults.updated({}, {"decoder": "reference", "revise": "remask"})
    assert chosen.revise == "remask" and not chosen.early_stop


def test_trace_order_counts_the_final_assignment_and_survives_json():
    trace = DecodeTrace(region_start=[2], steps=[[
        StepRecord((2, 4), (11, 12), (0.9, 0.8)),
        StepRecord((3,), (13,), (0.7,)),
        StepRecord((2,), (21,), (0.6,), revisions=((2, 11, None), (4, 12, None))),  # both re-masked; 2 again
        StepRecord((4,), (22,), (0.5,), revisions=((3, 13, 23),)),  # 3 edited to 23
    ]])
    # region 0 counts at its re-commit (step 2), 2 at its re-commit and 1 at its edit (both step 3); steps 0 and 1
    # keep nothing: all they assigned was taken back
    assert trace.order(0) == [[0], [2, 1]]
    assert trace.order(0, drop_empty=False) == [[], [], [0], [2, 1]]
    assert trace.commit_steps(0, 5) == [-1, -1, 2, 3, 3]
    assert {p: t for p, (_, t) in trace.final_assignments(0).items()} == {2: 21, 3: 23, 4: 22}
    assert trace.revisions(0) == [(2, 0, 11, None), (2, 2, 12, None), (3, 1, 13, 23)]
    again = DecodeTrace.from_json(trace.to_json())
    assert again == trace
    assert "revisions" not in trace.to_json()["steps"][0][0]  # traces without revisions read as before
    with pytest.raises(ValueError, match="not a decode trace"):
        DecodeTrace.from_json({"region_start": [0], "steps": [[{"positions": [], "tokens": [], "confidences": [],
                                                               "revisions": [[1, 2]]}]]})


def test_a_decoded_trace_with_revisions_round_trips(tiny, tmp_path):
    out = decode(tiny, PROMPT, config=DecodeConfig(max_new_tokens=6, steps=8),
                 decoder=DecoderConfig(revise="remask", revise_budget=3, revise_per_step=2), trace=True)
    out.trace.save(tmp_path / "trace.json")
    again = DecodeTrace.load(tmp_path / "trace.json")
    assert again.revisions(0) == out.trace.revisions(0) and len(again.revisions(0)) == 3
    assert again.order(0) == out.trace.order(0)
    # the AR-ness of one saved trace reads each position's final token
    analysed = analyse_trace(again, 0)
    assert analysed["tokens"] == out.generated[0].tolist() and None not in analysed["commit_step"]
    revised = sorted({p for _, p, _, _ in again.revisions(0)})
    assert [i for i, r in enumerate(analysed["revised"]) if r] == revised


def test_the_decode_order_picture_frames_revised_tokens(tmp_path):
    pytest.importorskip("matplotlib")
    from unmask.analysis.plots import plot_decode_order

    texts = ["def", " f", "():", " return", " 1"]
    fig = plot_decode_order(texts, [0, 1, 3, 2, 4], tmp_path / "order.png",
                            revised=[False, True, False, False, True])
    framed = [t.get_text() for t in fig.axes[0].texts if t.get_bbox_patch() is not None]
    assert framed == [" f", " 1"] and (tmp_path / "order.png").stat().st_size > 0
    with pytest.raises(ValueError, match="revised has 2 entries for 5 tokens"):
        plot_decode_order(texts, [0, 1, 3, 2, 4], tmp_path / "x.png", revised=[True, False])


def test_options_round_trip_through_generation_config(tiny, tmp_path):
    from unmask.checkpoint import load_generation_defaults, read_generation_config, save_model

    decoder = DecoderConfig(revise="edit", revise_budget=6, revise_per_step=3, edit_low=0.2, edit_high=0.8)
    save_model(tiny, tmp_path / "m", decoder=decoder)
    assert read_generation_config(tmp_path / "m")["revise"] == "edit"
    assert load_generation_defaults(tmp_path / "m").decoder == decoder


@pytest.mark.parametrize("verb", ["generate", "eval"])
def test_cli_flags(verb):
    from unmask.cli import parse
    from unmask.commands.common import CLIError, dataclass_overrides

    args = parse([verb, "some/model", "--decoder", "reference", "--revise", "remask", "--revise-budget", "4",
                  "--revise-per-step", "3", "--edit-low", "0.2", "--edit-high", "0.7"])
    assert dataclass_overrides(DecoderConfig, args) == dict(decoder="reference", revise="remask", revise_budget=4,
                                                           revise_per_step=3, edit_low=0.2, edit_high=0.7)
    with pytest.raises(CLIError, match="invalid choice: 'rewrite'"):
        parse([verb, "some/model", "--revise", "rewrite"])


def test_server_takes_the_revision_fields():
    pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    import unmask
    from unmask.serve.app import create_app
    from unmask.serve.config import ServeConfig

    model, tokenizer = unmask.load(SHIPPED)
    body = {"prompt": "def f(x):\n", "max_tokens": 8, "steps": 8, "decoder": "reference", "revise": "remask",
            "revise_budget": 3, "revise_per_step": 2}
    with testclient.TestClient(create_app(model, tokenizer, ServeConfig(batch_wait_ms=0))) as client:
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        direct = decode(model, torch.tensor([tokenizer.encode("def f(x):\n")]),
                        config=model.generation_defaults.replace(max_new_tokens=8, steps=8),
                        decoder=DecoderConfig(revise="remask", revise_budget=3, revise_per_step=2))
        assert reply.json()["choices"][0]["text"] == tokenizer.decode(direct.generated[0].tolist(), cut=True)
        refused = client.post("/v1/completions", json={**body, "decoder": "blocks"})
        assert refused.status_code == 400 and "--decoder reference" in refused.json()["error"]["message"]
