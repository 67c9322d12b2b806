"""Tests for unmask.rl.loop: one update moves the policy the right way, zero advantages do nothing, KL is 0 at
the reference, micro-batching does not change the update, the reference blend and the LR schedule match their
formulas, kill + resume equals an uninterrupted run, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import MASK_ID, make_model

from unmask.data.synthetic import synthetic_tasks
from unmask.errors import ConfigError
from unmask.rl.grpo import group_advantages
from unmask.rl.loop import (
    RLConfig,
    RolloutBatch,
    _completion_mask,
    assemble_rollouts,
    policy_update,
    rl,
    sync_reference,
    update_lr,
)
from unmask.rl.rewards import register_reward


@register_reward("test_digits")
def digit_share(completions, **row):
    """Stub reward for loop tests (no sandbox): a deterministic score of the text that varies across samples."""
    return [(len(set(c)) % 5) / 4 for c in completions]


def small_batch(G: int = 2, P: int = 4, L: int = 6, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 100, (P,), generator=g)
    completions = torch.randint(1, 100, (G, L), generator=g)
    ids = torch.cat([prompt[None].expand(G, -1), completions], dim=1)
    pm = torch.zeros(G, P + L, dtype=torch.bool)
    pm[:, :P] = True
    return RolloutBatch(input_ids=ids, attention_mask=torch.ones_like(pm), prompt_mask=pm, generated_mask=~pm,
                        completion_mask=~pm, advantages=torch.zeros(G), seeds=torch.tensor([[0, i] for i in range(G)]))


def full_mask_logp(model, batch: RolloutBatch) -> torch.Tensor:
    """Summed log p(x0 | completion fully masked) per row: a deterministic yardstick for the policy."""
    with torch.no_grad():
        noisy = torch.where(batch.completion_mask, MASK_ID, batch.input_ids)
        logits = model(noisy)
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # shift convention
        lp = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[..., None])[..., 0]
    return (lp * batch.completion_mask).sum(1)


def adamw(model, lr):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


def test_one_update_raises_the_rewarded_completion() -> None:
    model = make_model(0)
    batch = small_batch()
    batch.advantages = group_advantages([1.0, 0.0])  # completion 0 rewarded
    before = full_mask_logp(model, batch)
    params = [p.detach().clone() for p in model.parameters()]
    cfg = RLConfig(mu=2, lr=3e-3, beta=0.0, estimator="coupled", rewards="test_digits", reward_weights="1")
    stats = policy_update(model, model, None, adamw(model, cfg.lr), batch, cfg=cfg, step=0, mask_id=MASK_ID)
    after = full_mask_logp(model, batch)
    assert any(not torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert after[0] > before[0] + 0.05, (before, after)  # the rewarded completion got likelier
    assert after[1] < before[1] - 0.05  # the other one less likely
    assert stats["grad_norm"] > 0 and stats["kl"] == 0.0


@pytest.mark.parametrize("estimator", ["coupled", "decoupled", "diffu-grpo"])
def test_identical_rewards_leave_the_policy_unchanged(estimator: str) -> None:
    model = make_model(1)
    batch = small_batch(G=3)
    batch.advantages = group_advantages([0.5, 0.5, 0.5])
    params = [p.detach().clone() for p in model.parameters()]
    cfg = RLConfig(mu=1, lr=1e-2, beta=0.0, estimator=estimator, rewards="test_digits", reward_weights="1")
    stats = policy_update(model, model, None, adamw(model, cfg.lr), batch, cfg=cfg, step=0, mask_id=MASK_ID)
    assert stats["grad_norm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))


def test_kl_is_zero_at_the_reference_and_positive_after_moving() -> None:
    model = make_model(2)
    reference = make_model(2).requires_grad_(False)
    batch = small_batch(G=2)
    batch.advantages = torch.tensor([1.0, -1.0])
    cfg = RLConfig(mu=1, lr=1e-2, beta=0.1, rewards="test_digits", reward_weights="1")
    opt = adamw(model, cfg.lr)
    stats = policy_update(model, model, reference, opt, batch, cfg=cfg, step=0, mask_id=MASK_ID)
    assert stats["kl"] == 0.0  # same weights, same masks: ref - new == 0 exactly
    stats = policy_update(model, model, reference, opt, batch, cfg=cfg, step=1, mask_id=MASK_ID)
    assert stats["kl"] > 0.0


def test_micro_batching_does_not_change_the_update() -> None:
    batch = small_batch(G=4, L=5)
    batch.advantages = torch.tensor([1.0, -0.5, 0.25, -0.75])
    batch.completion_mask[1, -2:] = False  # unequal lengths: the token mean must use the global count
    results = []
    for budget in (10_000, 3 * batch.input_ids.shape[1]):  # everything at once / one row per forward
        model = make_model(3)
        cfg = RLConfig(mu=2, lr=1e-3, beta=0.05, pass_token_budget=budget, rewards="test_digits", reward_weights="1")
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)  # not Adam: Adam would hide a wrong loss scale
        stats = policy_update(model, model, make_model(3), sgd, batch, cfg=cfg, step=5, mask_id=MASK_ID)
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (s1, p1), (s2, p2) = results
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert s1["loss"] == pytest.approx(s2["loss"], rel=1e-4, abs=1e-6)


def test_completion_mask_stops_after_first_stop_token() -> None:
    gen = torch.tensor([[5, 6, 0, 7, 0], [5, 6, 7, 8, 9], [0, 1, 2, 3, 4]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(_completion_mask(gen, [0]), expected)


def test_assembled_generated_region_ignores_stops_and_missing_rewards() -> None:
    prompts = [torch.tensor([7, 8, 9]), torch.tensor([7])]  # prompt lengths 3 and 1: group 1 is left-padded
    generated = [torch.tensor([[5, 0, 6], [5, 6, 4]]), torch.tensor([[0, 1, 2], [3, 4, 0]])]
    completion = [_completion_mask(g, [0]) for g in generated]
    completion[1][1] = False  # a missing reward: nothing scored
    ids, attn, prompt, gen_mask, comp = assemble_rollouts(prompts, generated, completion, pad_id=99)
    # By hand: the generated region is the last 3 columns of every row, stops and rewards notwithstanding.
    assert ids.tolist() == [[7, 8, 9, 5, 0, 6], [7, 8, 9, 5, 6, 4], [99, 99, 7, 0, 1, 2], [99, 99, 7, 3, 4, 0]]
    assert gen_mask.tolist() == [[False] * 3 + [True] * 3] * 4
    assert comp.tolist() == [[False] * 3 + [True, True, False], [False] * 3 + [True] * 3,
                             [False] * 3 + [True, False, False], [False] * 6]
    assert not bool((prompt & gen_mask).any()) and torch.equal(attn, ids != 99)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="estimator"):
        RLConfig(estimator="exact")
    with pytest.raises(ConfigError, match="num_generations"):
        RLConfig(num_generations=1)
    with pytest.raises(ConfigError, match="same number"):
        RLConfig(rewards="code,code_format", reward_weights="1")
    with pytest.raises(ConfigError, match="unknown reward"):
        RLConfig(rewards="nope", reward_weights="1")
    with pytest.raises(ConfigError, match="t_low"):
        RLConfig(t_low=0.9, t_high=0.1)
    with pytest.raises(ConfigError, match="unknown RL config"):
        RLConfig.from_dict({"learning_rate": 1.0})
    assert RLConfig().reward_weight_map() == {"code": 2.0, "code_format": 0.5}  # DiffuCoder's defaults (docs/rl.md)
    d = RLConfig()
    assert (d.num_generations, d.temperature, d.max_new_tokens, d.steps, d.alg) == (10, 1.2, 256, 256, "entropy")
    assert (d.eps_clip, d.beta, d.mu, d.lr, d.ref_sync_every) == (0.5, 0.01, 2, 1e-6, 64)
    # DiffuCoder's recipe (docs/rl.md, "Differences from the reference recipe"): blended reference, cosine to
    # 0.1 x peak, clip 0.2, Adam betas (0.9, 0.99), weight decay 0.1; diffu-GRPO masks no prompt token.
    assert (d.ref_sync_alpha, d.lr_schedule, d.min_lr_ratio) == (0.6, "cosine", 0.1)
    assert (d.grad_clip, d.beta1, d.beta2, d.weight_decay, d.prompt_mask_ratio) == (0.2, 0.9, 0.99, 0.1, 0.0)


@pytest.mark.parametrize(("field", "bad"), [
    ("ref_sync_alpha", 0.0), ("ref_sync_alpha", 1.5), ("min_lr_ratio", -0.1), ("min_lr_ratio", 2.0),
    ("beta1", 1.0), ("beta2", -0.5), ("beta2", float("nan")), ("prompt_mask_ratio", 1.5), ("lr_schedule", "linear"),
    ("grad_clip", -1.0), ("weight_decay", float("inf")),
])
def test_config_errors_name_the_field(field: str, bad) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must"):
        RLConfig(**{field: bad})
    RLConfig(ref_sync_alpha=1.0, min_lr_ratio=0.0, beta1=0.0, prompt_mask_ratio=0.15, lr_schedule="constant")


def test_sync_reference_blends_by_hand() -> None:
    policy, reference = make_model(6), make_model(7).requires_grad_(False)
    p_sd = {k: v.clone() for k, v in policy.state_dict().items()}
    r_sd = {k: v.clone() for k, v in reference.state_dict().items()}
    assert any(not torch.equal(p_sd[k], r_sd[k]) for k in p_sd)
    sync_reference(reference, policy, 0.6)
    after = reference.state_dict()
    for k in r_sd:  # every entry of the state dict, tied ones included, blended once
        torch.testing.assert_close(after[k], 0.6 * p_sd[k] + 0.4 * r_sd[k], rtol=1e-6, atol=1e-7)
    assert all(torch.equal(v, p_sd[k]) for k, v in policy.state_dict().items())  # the policy is untouched
    sync_reference(reference, policy, 1.0)
    assert all(torch.equal(v, p_sd[k]) for k, v in reference.state_dict().items())  # alpha 1: a copy
    with pytest.raises(ValueError, match="alpha"):
        sync_reference(reference, policy, 0.0)


def test_lr_schedule_follows_the_cosine_formula() -> None:
    cfg = RLConfig(lr=2e-5, max_steps=10, mu=2, min_lr_ratio=0.1)  # 20 optimiser updates over the run
    for update in (0, 1, 5, 10, 13, 19, 20, 25):
        progress = min(update, 20) / 20
        by_hand = 2e-5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert update_lr(cfg, update) == pytest.approx(by_hand, rel=1e-12)
    assert update_lr(cfg, 0) == pytest.approx(2e-5) and update_lr(cfg, 20) == pytest.approx(2e-6)
    flat = RLConfig(lr=2e-5, max_steps=10, mu=2, lr_schedule="constant")
    assert {update_lr(flat, u) for u in range(25)} == {2e-5}


def test_policy_update_applies_the_given_learning_rates() -> None:
    batch = small_batch(G=2)
    batch.advantages = torch.tensor([1.0, -1.0])
    cfg = RLConfig(mu=2, beta=0.0, grad_clip=0.0, rewards="test_digits", reward_weights="1")
    model = make_model(8)
    before = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    policy_update(model, model, None, sgd, batch, cfg=cfg, step=0, mask_id=MASK_ID, lrs=[0.0, 0.0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # LR 0 twice: nothing moved
    policy_update(model, model, None, sgd, batch, cfg=cfg, step=0, mask_id=MASK_ID, lrs=[0.0, 0.25])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert [g["lr"] for g in sgd.param_groups] == [0.25]
    with pytest.raises(ValueError, match="one learning rate per update"):
        policy_update(model, model, None, sgd, batch, cfg=cfg, step=0, mask_id=MASK_ID, lrs=[0.1])


# ---------------------------------------------------------------------------- the whole loop


@pytest.fixture(scope="module")
def tiny_setup(tokenizer):
    special = tokenizer.special
    tasks = synthetic_tasks("train", 4, 0)

    def model():
        return make_model(4, sharpen=3.0, vocab_size=tokenizer.vocab_size, mask_token_id=special.mask,
                          pad_token_id=special.pad, eos_token_id=special.eos, bos_token_id=special.eos)

    return model, tasks


def loop_config(run_dir, **changes) -> RLConfig:
    base = dict(run_dir=str(run_dir), num_generations=2, prompts_per_step=2, max_steps=2, mu=2, lr=1e-3,
                beta=0.05, ref_sync_every=1, max_new_tokens=4, steps=2, temperature=1.0, top_p=None,
                rewards="test_digits", reward_weights="1", save_every=1, progress=False, device="cpu")
    return RLConfig(**{**base, **changes})


def strip_times(records):
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in records]


def test_kill_and_resume_equals_uninterrupted(tmp_path, tokenizer, tiny_setup) -> None:
    make, tasks = tiny_setup
    full_model = make()
    full = rl(loop_config(tmp_path / "full"), model=full_model, tokenizer=tokenizer, tasks=tasks)
    assert full.step == 2 and len(full.history) == 2
    first = make()
    part = rl(loop_config(tmp_path / "part", stop_after_steps=1), model=first, tokenizer=tokenizer, tasks=tasks)
    assert part.step == 1
    resumed_model = make()  # a fresh process would start from the initial weights; resume must replace them
    rest = rl(loop_config(tmp_path / "part", resume=True), model=resumed_model, tokenizer=tokenizer, tasks=tasks)
    assert rest.step == 2 and len(rest.history) == 1
    for a, b in zip(full_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip_times(lines(tmp_path / "full")) == strip_times(lines(tmp_path / "part"))  # the LR included
    cfg = loop_config(tmp_path / "full")
    assert [r["lr"] for r in full.history] == [update_lr(cfg, 1), update_lr(cfg, 3)]  # last update of each step
    for run in ("full", "part"):  # the optimiser's own LR at the end, uninterrupted and resumed
        state = torch.load(tmp_path / run / "checkpoint-0000002" / "trainer_state.pt", weights_only=False)
        assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [update_lr(cfg, 3)] * 2
    assert any(r["reward_std"] > 0 for r in full.history)  # the stub reward varied, so updates had signal
    assert full.history[0]["kl"] > 0.0  # mu=2: the second update of step 1 sees a policy that moved
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        rl(loop_config(tmp_path / "full"), model=make(), tokenizer=tokenizer, tasks=tasks)


def test_loop_blends_the_reference_after_a_sync(tmp_path, tokenizer, tiny_setup) -> None:
    make, tasks = tiny_setup
    policy = make()
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    rl(loop_config(tmp_path / "run", max_steps=1, mu=1), model=policy, tokenizer=tokenizer, tasks=tasks)
    state = torch.load(tmp_path / "run" / "checkpoint-0000001" / "trainer_state.pt", weights_only=False)
    final = policy.state_dict()
    assert any(not torch.equal(final[k], initial[k]) for k in final)  # the step moved the policy
    for k, ref in state["reference"].items():  # synced after step 1 (ref_sync_every 1): 0.6 new + 0.4 old
        torch.testing.assert_close(ref, 0.6 * final[k] + 0.4 * initial[k], rtol=1e-6, atol=1e-7)


def test_cli_rl_end_to_end_with_sandboxed_rewards(tmp_path, tokenizer, tiny_setup, capsys) -> None:
    from unmask.checkpoint import save_model
    from unmask.cli import main

    make, _ = tiny_setup
    recommended = {"max_new_tokens": 6, "steps": 6, "decoder": "blocks", "block_length": 2, "early_stop": True}
    save_model(make(), tmp_path / "model", tokenizer=tokenizer, generation=recommended)
    run = tmp_path / "run"
    argv = ["rl", "--model", str(tmp_path / "model"), "--data", "synthetic-train", "--synthetic-tasks", "3",
            "--run-dir", str(run), "--num-generations", "2", "--prompts-per-step", "1", "--max-steps", "1",
            "--max-new-tokens", "6", "--steps", "3", "--eval-every", "1", "--eval-limit", "1", "--no-progress",
            "--device", "cpu", "--estimator", "diffu-grpo"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 1 and 0.0 <= out["pass_rate"] <= 1.0 and "eval_pass@1" in out
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["reward_missing"] == 0 and record["completion_length"] > 0
    assert (run / "eval-0000001" / "summary.json").is_file() and (run / "checkpoint-0000001").is_dir()
    assert json.loads((run / "rl_config.json").read_text())["estimator"] == "diffu-grpo"
    carried = json.loads((run / "checkpoint-0000001" / "generation_config.json").read_text())
    assert {k: carried[k] for k in recommended} == recommended  # the policy keeps its parent's recommendation
    capsys.readouterr()
    assert main([*argv[:-2], "--estimator", "exact"]) == 2  # argparse rejects it by its choices: one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'exact'" in err and "diffu-grpo" in err
    assert main([*argv[:-2], "--estimator", "coupled", "--run-dir", str(run)]) == 2  # run dir holds checkpoints
    assert "already holds checkpoints" in capsys.readouterr().err


def test_rollouts_use_the_chosen_fast_decoder(tokenizer, tiny_setup) -> None:
    from unmask.config import DecoderConfig
    from unmask.decoding.dispatch import decode
    from unmask.evaluate import prompt_text
    from unmask.rl.loop import _ROLLOUT_PASS, mask_seed, rollout

    make, tasks = tiny_setup
    model = make()
    cfg = loop_config("unused", num_generations=3, max_new_tokens=8, steps=4, rollout_decoder="blocks",
                      rollout_block_length=4, rollout_cache="prefix", rollout_early_stop=True)
    prompt, generated, _, _ = rollout(model, tokenizer, tasks[1], cfg=cfg, step=2, slot=1)
    # independently: the same prompt, seed and decoder through decode() directly
    ids = torch.tensor(tokenizer.encode(prompt_text(tasks[1], tokenizer, False)))
    generator = torch.Generator().manual_seed(mask_seed(2, 1, 0, _ROLLOUT_PASS, cfg.seed))
    want = decode(model, ids[None].expand(3, -1).contiguous(), None, config=cfg.decode_config(),
                  decoder=DecoderConfig(decoder="blocks", block_length=4, cache="prefix", early_stop=True),
                  generator=generator).generated
    assert torch.equal(prompt, ids) and torch.equal(generated, want)
    reference = rollout(model, tokenizer, tasks[1], cfg=loop_config("unused", num_generations=3, max_new_tokens=8,
                                                                      steps=4), step=2, slot=1)[1]
    assert reference.shape == generated.shape
    with pytest.raises(ConfigError, match="KV cache needs"):
        loop_config("unused", rollout_cache="prefix")  # the reference decoder has no cache
    with pytest.raises(ConfigError, match="rollout_decoder must be one of"):
        loop_config("unused", rollout_decoder="fast")


def test_lora_rl_trains_only_adapters_against_the_base_and_resumes_exactly(tmp_path, tokenizer, tiny_setup) -> None:
    """LoRA RL: the base stays bit-identical, the KL anchor is the base (adapters off; no copy in the checkpoint),
    kill + resume equals an uninterrupted run, and --report-to tensorboard gets the metrics.jsonl numbers."""
    pytest.importorskip("peft")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make, tasks = tiny_setup
    lora = dict(lora_r=4, ref_sync_every=0, lr=1e-2, report_to="tensorboard")
    full_model = make()
    initial = {k: v.clone() for k, v in full_model.state_dict().items()}
    full = rl(loop_config(tmp_path / "full", **lora), model=full_model, tokenizer=tokenizer, tasks=tasks)
    rl(loop_config(tmp_path / "part", stop_after_steps=1, **lora), model=make(), tokenizer=tokenizer, tasks=tasks)
    resumed_model = make()
    rest = rl(loop_config(tmp_path / "part", resume=True, **lora), model=resumed_model, tokenizer=tokenizer,
              tasks=tasks)
    assert rest.step == 2
    a, b = full_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base = {k.replace(".base_layer", ""): v for k, v in a.items() if "lora_" not in k}
    assert base.keys() == initial.keys() and all(torch.equal(base[k], initial[k]) for k in initial)
    assert all(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # the adapters moved (B starts at 0)
    assert full.history[0]["kl"] > 0.0  # the second update of step 1 sees a policy away from the base
    checkpoint = tmp_path / "full" / "checkpoint-0000002"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert state["reference"] == {} and (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip_times(lines(tmp_path / "full")) == strip_times(lines(tmp_path / "part"))
    events = EventAccumulator(str(tmp_path / "full" / "tensorboard"))
    events.Reload()
    for key in ("reward_mean", "kl", "loss", "lr"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        want = [(r["step"], float(torch.tensor(r[key], dtype=torch.float32))) for r in lines(tmp_path / "full")]
        assert got == want, key
