"""Revising decoders against the reference sampler at equal forward passes (docs/sampler.md, "Revising committed
tokens"), on the procedural held-out tasks.

For each ``--steps`` value: pass@1 of the reference sampler, of ``remask`` and of ``edit`` (same ``steps``, so the
same forwards); for the revising ones also the pass@1 of their own draft (the canvas after the last draft step,
before any revision: the same decode without its revisions), how many programs the revisions turned from failing
to passing and back, and the revisions made. ``--signals`` also measures which confidence of a committed token
ranks wrong tokens low: per token of the reference decode, the probability stored when it was committed, the
probability read at its (visible) position on the finished canvas, and a leave-one-out read (that position alone
re-masked); as AUC at separating tokens that differ from a left-to-right decode (blocks of one token) and
failing from passing programs. Prints one JSON line, including the reproduce command.

    python bench/revision.py --model models/unmask-small --tasks 40 --steps 32,64
    python bench/revision.py --model models/unmask-small --tasks 40 --signals --steps ""
    python bench/revision.py --model models/unmask-small --tasks 200 --steps 64 --per-step 1 --budgets 8,16,32
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time

import torch
from decode import verdicts

import unmask
from unmask.config import DecoderConfig, revision_steps
from unmask.decoding import decode
from unmask.decoding.canvas import left_pad
from unmask.decoding.dispatch import decode_stream
from unmask.decoding.eos import first_stop
from unmask.decoding.revise import token_probs
from unmask.decoding.steps import run_steps
from unmask.diffusion import shift_logits
from unmask.evaluate import prompt_text
from unmask.model import padding_attention_mask, positions_from_mask


def passed(tasks, tokenizer, generated: list[list[int]]) -> list[bool]:
    """Sandbox verdict of each task's completion (one per task, in order)."""
    return [v == "1" for v in verdicts(tasks, tokenizer, generated)]


def run(model, batches, config, decoder: DecoderConfig) -> tuple[list[list[int]], list[list[int]], int, int]:
    """(final generated ids, the draft before any revision, forwards, revisions) over every batch."""
    draft_steps = config.steps - revision_steps(decoder)
    finals, drafts, forwards, revisions = [], [], 0, 0
    for ids, mask in batches:
        seen = {}

        def keep_draft(event, seen=seen, width=ids.shape[1]) -> None:
            if event.step == draft_steps - 1:
                seen["draft"] = event.canvas[:, width:].tolist()

        out = decode(model, ids, mask, config=config, decoder=decoder, generator=torch.Generator().manual_seed(0),
                     on_step=keep_draft)
        finals += out.generated.tolist()
        drafts += seen["draft"]
        forwards += out.stats.forward_passes
        revisions += out.stats.tokens_revised
    return finals, drafts, forwards, revisions


def compare(tasks, tokenizer, model, batches, config, decoders: dict[str, DecoderConfig]) -> dict:
    """One row per decoder at ``config.steps``; paired against the reference's verdicts."""
    rows, verdicts = {}, {}
    for name, decoder in decoders.items():
        began = time.perf_counter()
        finals, drafts, forwards, revisions = run(model, batches, config, decoder)
        ok = passed(tasks, tokenizer, finals)
        row = {"pass@1": round(sum(ok) / len(ok), 4), "forward_passes": forwards,
               "seconds": round(time.perf_counter() - began, 1)}
        if decoder.revise != "none":
            before = passed(tasks, tokenizer, drafts)
            ref = verdicts["reference"]
            row.update({
                "draft_steps": config.steps - revision_steps(decoder), "draft_pass@1": round(sum(before) / len(ok), 4),
                "revisions": revisions, "programs_changed": sum(f != d for f, d in zip(finals, drafts)),
                "fail_to_pass": sum(not b and a for b, a in zip(before, ok)),
                "pass_to_fail": sum(b and not a for b, a in zip(before, ok)),
                "vs_reference_gained": sum(a and not r for a, r in zip(ok, ref)),
                "vs_reference_lost": sum(r and not a for a, r in zip(ok, ref))})
        verdicts[name] = ok
        rows[name] = row
    return rows


def auc(wrong: list[float], right: list[float]) -> float | None:
    """P(a wrong token's signal < a right token's), ties half: 1 = the signal ranks every wrong token lowest."""
    if not wrong or not right:
        return None
    w, r = torch.tensor(wrong)[:, None], torch.tensor(right)[None, :]
    return round(float((w < r).float().mean() + 0.5 * (w == r).float().mean()), 4)


@torch.inference_mode()
def token_signals(model, ids, mask, config, mask_id: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The reference decode of a batch and, per generated token (B, L): its stored, visible and leave-one-out
    probability."""
    stored = {}

    def keep(event) -> None:
        p = event.logprobs
        stored.setdefault("p", torch.zeros(event.canvas.shape))[p.rows, p.cols] = p.chosen.exp()

    width, length = ids.shape[1], config.max_new_tokens
    canvas = torch.cat([ids, torch.full((len(ids), length), mask_id)], 1)
    real = torch.cat([mask, torch.ones(len(ids), length, dtype=torch.long)], 1).bool()
    stream = decode_stream(model, canvas, real.long(), config=config, decoder=DecoderConfig(), region_start=width,
                           mask_token_id=mask_id, generator=torch.Generator().manual_seed(0), logprobs=1)
    final = run_steps(stream, canvas, region_start=width, on_step=keep).sequences
    mask4, positions = padding_attention_mask(real), positions_from_mask(real)
    visible = token_probs(shift_logits(model(final, attention_mask=mask4, position_ids=positions)), final, mask_id)[0]
    loo = torch.zeros(final.shape)
    cols = torch.arange(width, width + length)
    for b in range(len(ids)):  # each generated position alone re-masked: L canvases per row
        probe = final[b].repeat(length, 1)
        probe[torch.arange(length), cols] = mask_id
        logits = shift_logits(model(probe, attention_mask=mask4[b:b + 1].expand(length, -1, -1, -1),
                                    position_ids=positions[b:b + 1].expand(length, -1)))
        loo[b, cols] = token_probs(logits[torch.arange(length), cols][None], final[b, cols][None], mask_id)[0][0]
    signals = {"stored": stored["p"], "visible": visible, "leave_one_out": loo}
    return final[:, width:], {k: v[:, width:] for k, v in signals.items()}


def signal_aucs(tasks, tokenizer, model, batches, config, stops) -> dict:
    """AUC of each signal at telling wrong tokens (differ from a left-to-right decode; of a failing program)."""
    left_to_right = DecoderConfig(decoder="blocks", block_length=1)
    generated, signals, reference = [], {}, []
    for ids, mask in batches:
        gen, sig = token_signals(model, ids, mask, config, model.config.mask_token_id)
        generated += gen.tolist()
        for k, v in sig.items():
            signals.setdefault(k, []).extend(v.tolist())
        reference += decode(model, ids, mask, config=config, decoder=left_to_right).generated.tolist()
    ok = passed(tasks, tokenizer, generated)
    keep = [min(int(first_stop(torch.tensor([g]), stops)[0]) + 1, len(g)) for g in generated]  # through the eos
    out = {"reference_pass@1": round(sum(ok) / len(ok), 4),
           "tokens": sum(keep), "differ_from_left_to_right": sum(
               sum(a != b for a, b in zip(g[:k], r[:k])) for g, r, k in zip(generated, reference, keep))}
    for name, values in signals.items():
        differ, same, fail, pass_ = [], [], [], []
        for g, r, v, k, good in zip(generated, reference, values, keep, ok):
            for a, b, s in zip(g[:k], r[:k], v[:k]):
                (differ if a != b else same).append(s)
            (pass_ if good else fail).extend(v[:k])
        out[name] = {"auc_differs_from_left_to_right": auc(differ, same), "auc_tokens_of_failing_programs":
                     auc(fail, pass_), "mean": round(sum(map(sum, values)) / sum(map(len, values)), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--tasks", type=int, default=40, help="first N procedural held-out tasks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task set")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", default="32,64", help="comma list of step budgets (forwards); empty: none")
    parser.add_argument("--budget", type=int, default=16, help="revise_budget")
    parser.add_argument("--per-step", type=int, default=2, help="revise_per_step")
    parser.add_argument("--budgets", default="", help="comma list of remask budgets: rows reference and "
                        "'remask B=b' only (the budget sweep), instead of reference, remask and edit at --budget")
    parser.add_argument("--edit-low", type=float, default=DecoderConfig.edit_low)
    parser.add_argument("--edit-high", type=float, default=DecoderConfig.edit_high)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--signals", action="store_true", help="also measure the confidence signals (AUC)")
    args = parser.parse_args()

    from unmask.data.synthetic import synthetic_tasks

    model, tokenizer = unmask.load(args.model)
    tasks = synthetic_tasks("heldout", args.tasks, args.seed)
    prompts = [tokenizer.encode(prompt_text(t, tokenizer, chat=False)) for t in tasks]
    batches = [left_pad(prompts[i:i + args.batch], tokenizer.special.pad)[:2]
               for i in range(0, len(prompts), args.batch)]
    base = model.generation_defaults.replace(max_new_tokens=args.max_new_tokens)
    revise = dict(revise_budget=args.budget, revise_per_step=args.per_step, edit_low=args.edit_low,
                  edit_high=args.edit_high)
    decoders = {"reference": DecoderConfig(), "remask": DecoderConfig(revise="remask", **revise),
                "edit": DecoderConfig(revise="edit", **revise)}
    if args.budgets.strip():  # the budget sweep: the reference and one remask row per budget
        decoders = {"reference": DecoderConfig()}
        for budget in (int(b) for b in args.budgets.split(",") if b.strip()):
            decoders[f"remask B={budget}"] = DecoderConfig(revise="remask", **{**revise, "revise_budget": budget})
    result = {"bench": "revision", "model": args.model, "tasks": len(tasks), "max_new_tokens": args.max_new_tokens,
              "alg": base.alg, "temperature": base.temperature, **revise, "cpu_threads": torch.get_num_threads()}
    for steps in (int(s) for s in args.steps.split(",") if s.strip()):
        result[f"steps={steps}"] = compare(tasks, tokenizer, model, batches, base.replace(steps=steps), decoders)
    if args.signals:
        config = base.replace(steps=args.max_new_tokens)
        result["signals"] = signal_aucs(tasks, tokenizer, model, batches, config, tokenizer.special.stop_ids())
    result.update(torch=torch.__version__, python=platform.python_version(),
                  command="python bench/revision.py " + shlex.join(sys.argv[1:]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
