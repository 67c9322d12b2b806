"""How noisy is each RL log-probability estimator? Measured directly on fixed rollouts (#16, claim 2).

Rolls out G completions for each of N train-split prompts once (the RL loop's own ``rollout``, at the rollout
temperature), then redraws every estimator's masks ``--draws`` times on exactly those sequences and records each
sequence's estimated log-probability (the sum of its per-token estimates over the scored completion). Per
estimator: the variance over draws of that sum, averaged over sequences (and its ratio to coupled's), the mean
estimate, and the forwards it takes. coupled and decoupled cost the same three forwards per sequence; diffu-GRPO
takes one and, without prompt masking, is deterministic (variance 0, but a different, single-context quantity),
so d1's 15%-prompt-masked variant is listed as well.

    PYTHONPATH=src python bench/estimator_variance.py models/unmask-small --prompts 16 --generations 8 \
        --draws 64 --json reports/findings/estimator_variance.json

Prints one JSON line (the numbers and the command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

VARIANTS = (("coupled", 0.0), ("decoupled", 0.0), ("diffu-grpo", 0.0), ("diffu-grpo", 0.15))


def fixed_rollouts(model, tokenizer, args) -> tuple[torch.Tensor, ...]:
    """(ids, attention, prompt, generated, completion) masks of G rollouts of N train-split prompts."""
    from unmask.data.synthetic import synthetic_tasks
    from unmask.rl.loop import RLConfig, assemble_rollouts, rollout

    cfg = RLConfig(num_generations=args.generations, max_new_tokens=args.max_new_tokens, steps=args.steps,
                   temperature=args.temperature, rollout_decoder="blocks", rollout_block_length=8,
                   rollout_cache="prefix", rollout_early_stop=True, seed=args.seed, device="cpu")
    prompts, generated, completion = [], [], []
    for slot, task in enumerate(synthetic_tasks("train", args.prompts, args.seed)):
        prompt, gen, comp, _ = rollout(model, tokenizer, task, cfg=cfg, step=0, slot=slot)
        prompts.append(prompt)
        generated.append(gen)
        completion.append(comp)
    return assemble_rollouts(prompts, generated, completion, tokenizer.special.pad)


@torch.no_grad()
def sequence_estimates(model, batch, estimator: str, prompt_ratio: float, draws: int, seed: int) -> torch.Tensor:
    """(draws, R) summed log-prob estimate of every sequence under ``draws`` independent mask plans."""
    from unmask.rl.grpo import seeded_generator, sequence_logprob_estimates

    ids, attention, prompt_mask, gen_mask, comp_mask = batch
    rows = []
    for d in range(draws):
        per_token = sequence_logprob_estimates(
            lambda x, attention_mask: model(x, attention_mask=attention_mask), ids, prompt_mask, comp_mask,
            mask_id=int(model.config.mask_token_id), attention_mask=attention.long(), generated_mask=gen_mask,
            estimator=estimator, prompt_mask_ratio=prompt_ratio, generator=seeded_generator(seed * 100_003 + d),
            chunk_size=64)
        rows.append(per_token.sum(dim=1))
    return torch.stack(rows)  # (draws, R)


def summarise(estimates: torch.Tensor) -> dict[str, float]:
    per_sequence_var = estimates.var(dim=0, unbiased=True)  # (R,)
    return {"mean_variance": float(per_sequence_var.mean()), "median_variance": float(per_sequence_var.median()),
            "mean_estimate": float(estimates.mean()), "mean_sd": float(per_sequence_var.sqrt().mean())}


def ratio_interval(num: torch.Tensor, den: torch.Tensor, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% bootstrap interval (over sequences) of mean(num) / mean(den), two per-sequence variance vectors."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, num.shape[0], (resamples, num.shape[0]), generator=generator)
    ratios = num[picks].mean(1) / den[picks].mean(1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=ratios.dtype))
    return [float(low), float(high)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if min(args.prompts, args.generations, args.draws) < 2:
        parser.error("--prompts, --generations and --draws must each be at least 2")
    torch.set_num_threads(args.threads)

    import unmask

    model, tokenizer = unmask.load(args.model, dtype="float32")
    model.eval()
    start = time.perf_counter()
    batch = fixed_rollouts(model, tokenizer, args)
    result: dict = {"model": args.model, "sequences": int(batch[0].shape[0]), "draws": args.draws,
                    "scored_tokens_mean": float(batch[4].sum(1).float().mean()), "estimators": {}}
    variances = {}
    for estimator, ratio in VARIANTS:
        name = estimator if ratio == 0 else f"{estimator} (prompt mask {ratio:g})"
        estimates = sequence_estimates(model, batch, estimator, ratio, args.draws, args.seed)
        variances[name] = estimates.var(dim=0, unbiased=True).double()
        result["estimators"][name] = {"forwards_per_sequence": 1 if estimator == "diffu-grpo" else 3,
                                      **summarise(estimates)}
    coupled = variances["coupled"]
    for name, numbers in result["estimators"].items():
        numbers["variance_vs_coupled"] = float(variances[name].mean() / coupled.mean())
        numbers["variance_vs_coupled_ci95"] = ratio_interval(variances[name], coupled)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["command"] = "PYTHONPATH=src python bench/estimator_variance.py " + shlex.join(sys.argv[1:] if argv is None
                                                                                          else argv)
    line = json.dumps(result)
    print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
