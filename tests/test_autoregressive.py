"""The autoregressive baseline: causal attention leaks nothing from the future, the KV-cached decoder equals
recomputing every step, the next-token loss equals a per-prefix computation, and training saves a Qwen2
checkpoint that loads back and continues a learned sequence."""

from __future__ import annotations

import json
import math

import pytest
import torch
from margins import MARGIN, token_margins

import unmask
from unmask.autoregressive import causal_attention, generate_ar
from unmask.config import ModelConfig
from unmask.errors import ConfigError
from unmask.model import DreamModel
from unmask.train import TrainConfig, TrainData, _loss_sum, make_batch, train
from unmask.training_data import TokenRows

V = 32


def tiny(seed: int = 0) -> DreamModel:
    config = ModelConfig.from_name("test", vocab_size=V, mask_token_id=V - 1, pad_token_id=0, eos_token_id=0,
                                   bos_token_id=0)
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.eval()


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_causal_attention_hides_the_future():
    model = tiny()
    ids = torch.randint(1, V - 1, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(1, V - 1, (2, 5), generator=torch.Generator().manual_seed(2))
    mask = causal_attention(torch.ones(2, 12, dtype=torch.bool))
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), model(changed, attention_mask=mask)
    assert torch.equal(a[:, :7], b[:, :7])  # outputs before the change see none of it
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    # a left pad is invisible: the padded row's outputs equal the unpadded row's
    padded, valid = left_padded([ids[0].tolist(), ids[0, :9].tolist()])
    with torch.no_grad():
        out = model(padded, attention_mask=causal_attention(valid.bool()),
                    position_ids=(valid.cumsum(-1) - 1).clamp(min=0))
    assert torch.allclose(out[1, 3:], a[0, :9], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_cached_decoding_equals_recomputing_every_step(temperature):
    model = tiny(3)
    ids, mask = left_padded([[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]])
    # The cached step attends one query over the cache, the recomputed one the whole prefix; a padded row
    # differs from the row alone: logits equal only to ~1e-6. Greedy tokens are then equal because each
    # step's top-1 logit leads the runner-up by far more (asserted on the recomputed and the lone decodes:
    # >= 1.6e-3); sampled ones because a draw flips only within ~1e-6 of a boundary (left to chance).
    used: list[torch.Tensor] = []  # the logits each forward's last position hands to the sampler
    hook = model.register_forward_hook(lambda module, args, out: used.append(out[:, -1]))
    runs = []
    try:
        for use_cache in (True, False):
            used.clear()  # keep only the recomputing run's (and the lone runs') logits
            gen = torch.Generator().manual_seed(11)
            runs.append(generate_ar(model, ids, mask, max_new_tokens=10, temperature=temperature, generator=gen,
                                    use_cache=use_cache))
        alone = [generate_ar(model, torch.tensor([prompt]), max_new_tokens=10)
                 for prompt in ([5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16])] if temperature == 0.0 else []
    finally:
        hook.remove()
    if temperature == 0.0:
        assert min(float(token_margins(logits).min()) for logits in used) >= MARGIN
    assert torch.equal(runs[0].generated, runs[1].generated)
    assert runs[0].forward_passes == runs[1].forward_passes
    if temperature == 0.0:  # greedy rows do not depend on their batch-mates
        for row, lone in enumerate(alone):
            assert torch.equal(lone.generated[0], runs[0].generated[row])


def test_early_stop_pads_after_the_first_stop_token():
    model = tiny(4)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    free = generate_ar(model, ids, max_new_tokens=12)
    stop = int(free.generated[0, 3])  # pretend the 4th token of row 0 is a stop token
    out = generate_ar(model, ids, max_new_tokens=12, stop_ids=[stop], pad_id=0)
    for row in range(2):
        tokens = free.generated[row].tolist()
        cut = tokens.index(stop) + 1 if stop in tokens else len(tokens)
        assert out.generated[row, :cut].tolist() == tokens[:cut]
        assert set(out.generated[row, cut:].tolist()) <= {0}
    cuts = [(free.generated[r].tolist().index(stop) + 1 if stop in free.generated[r].tolist() else 12)
            for r in range(2)]
    stopped = [stop in free.generated[r].tolist() for r in range(2)]
    assert out.useful_tokens == sum(c - s for c, s in zip(cuts, stopped)) and out.forward_passes == max(cuts)


def test_next_token_loss_equals_per_prefix_computation():
    model = tiny(5)
    cfg = TrainConfig(objective="autoregressive", stage="sft", seq_len=10, progress=False)
    clean = torch.tensor([[4, 5, 6, 7, 0, 0, 0, 0, 0, 0],  # prompt 2, response 5 6 7 EOS, then pads
                          [8, 9, 10, 11, 12, 13, 14, 0, 0, 0]])  # prompt 3
    prompt_lengths = torch.tensor([2, 3])
    batch = make_batch(clean, prompt_lengths, step=0, cfg=cfg, mask_token_id=V - 1,
                       generator=torch.Generator(), stop_id=0)
    # targets: the response up to and including its first EOS, nothing after
    assert batch.masked[0].tolist() == [False, False, True, True, True, False, False, False, False, False]
    assert batch.masked[1].tolist() == [False, False, False, True, True, True, True, True, False, False]
    with torch.no_grad():
        loss = _loss_sum(model(batch.input_ids, attention_mask=batch.attention_mask), batch, cfg)
        expected = 0.0
        for row in range(2):
            for j in torch.nonzero(batch.masked[row]).flatten().tolist():
                prefix = clean[row:row + 1, :j]  # the model sees only tokens before j
                logits = model(prefix, attention_mask=causal_attention(torch.ones_like(prefix, dtype=torch.bool)))
                expected -= float(torch.log_softmax(logits[0, -1], -1)[clean[row, j]])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_training_saves_a_qwen2_checkpoint_that_continues_the_corpus(tmp_path):
    base = torch.arange(1, 17).repeat(3)[:32]
    rows = TokenRows(torch.stack([torch.roll(base, -k) for k in range(16)]), torch.ones(16, dtype=torch.long))
    cfg = TrainConfig(objective="autoregressive", run_dir=str(tmp_path / "ar"), seq_len=32, batch_size=8,
                      max_steps=60, lr=3e-3, warmup_steps=5, eval_every=60, save_every=60, progress=False)
    result = train(cfg, model=tiny(6), data=TrainData(rows, rows))
    assert result.history[0]["loss"] > 0.8 * math.log(V)
    assert result.history[-1]["val_loss"] < 0.25 * math.log(V)  # each token is fixed by its predecessor
    checkpoint = tmp_path / "ar" / "checkpoint-0000060"
    raw = json.loads((checkpoint / "config.json").read_text())
    assert raw["model_type"] == "qwen2" and raw["architectures"] == ["Qwen2ForCausalLM"]
    assert "mask_token_id" not in raw
    model = unmask.checkpoint.load_model(checkpoint, dtype="float32")
    assert model.family == "qwen2"
    out = generate_ar(model, torch.tensor([[3, 4, 5, 6]]), max_new_tokens=8)
    assert out.generated[0].tolist() == [7, 8, 9, 10, 11, 12, 13, 14]
    unmask.checkpoint.save_model(model, tmp_path / "copy")  # re-saving keeps the causal format
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["model_type"] == "qwen2"


def test_autoregressive_objective_rejects_adaptation_flags():
    with pytest.raises(ConfigError, match="adapt_from_ar"):
        TrainConfig(objective="autoregressive", adapt_from_ar=True)
    with pytest.raises(ConfigError, match="objective must be one of"):
        TrainConfig(objective="causal")


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_decode_runs_a_causal_checkpoint_left_to_right(temperature):
    # one entry for every model: decode() (and unmask.generate) on a causal qwen2 checkpoint is generate_ar
    from unmask.decoding import decode
    from unmask.decoding.dispatch import decode_canvas

    model = tiny()
    model.config = model.config.replace(mask_token_id=None)
    model.family = "qwen2"
    ids, mask = left_padded([[5, 6, 7], [9, 4]])
    want = generate_ar(model, ids, mask, max_new_tokens=5, stop_ids=(0,), pad_id=model.config.pad_token_id or 0,
                       temperature=temperature, generator=torch.Generator().manual_seed(3))
    for run in (decode, unmask.generate):
        out = run(model, ids, mask, max_new_tokens=5, steps=5, temperature=temperature, stop_ids=(0,), seed=3)
        assert torch.equal(out.generated, want.generated) and torch.equal(out.sequences[:, :ids.shape[1]], ids)
        assert out.stats.forward_passes == want.forward_passes and out.stats.useful_tokens == want.useful_tokens
    with pytest.raises(ConfigError, match="causal qwen2 checkpoint.*cannot fill masks"):  # masks inside: diffusion
        decode_canvas(model, torch.tensor([[5, 6, 0, 7]]), steps=2)


def test_eval_decodes_a_causal_model_left_to_right(tokenizer, tmp_path):
    from unmask.config import DecodeConfig
    from unmask.evaluate import EvalConfig, clean_completion, evaluate_model, load_tasks, program_mode, prompt_text

    config = ModelConfig.from_name("test", vocab_size=tokenizer.vocab_size, mask_token_id=None,
                                   pad_token_id=tokenizer.special.pad, eos_token_id=tokenizer.special.eos,
                                   bos_token_id=tokenizer.special.eos)
    model = DreamModel(config)
    model.init_weights(torch.Generator().manual_seed(8))
    model.family = "qwen2"
    model.eval()
    cfg = EvalConfig(benchmark="synthetic", limit=3, synthetic_tasks=3, batch_size=2)
    evaluate_model(model, tokenizer, cfg, DecodeConfig(max_new_tokens=6, steps=6), tmp_path / "ev", progress=False)
    rows = {r["task_id"]: r for r in map(json.loads, (tmp_path / "ev" / "results.jsonl").read_text().splitlines())}
    for task in load_tasks(cfg):  # each row alone, greedy: what the harness must have run
        ids = torch.tensor([tokenizer.encode(prompt_text(task, tokenizer, False))])
        out = generate_ar(model, ids, max_new_tokens=6, stop_ids=tokenizer.special.stop_ids(),
                          pad_id=tokenizer.special.pad)
        text = clean_completion(tokenizer.decode(out.generated[0].tolist()), program_mode(task, False))
        assert rows[task.task_id]["completion"] == text
