"""The lm-eval model ``unmask`` (src/unmask/lm_eval.py) on a tiny saved model, offline: its settings, its
log-likelihoods and generations against unmask's own functions called directly, the bos option, and whole
lm-eval runs over local YAML tasks whose metrics are recomputed by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Offline before lm-eval and datasets are imported: a task must never reach the hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[eval]')")

import torch  # noqa: E402
from conftest import make_model  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import unmask  # noqa: E402
from unmask.checkpoint import save_model  # noqa: E402
from unmask.config import DecodeConfig, DecoderConfig  # noqa: E402
from unmask.decoding.canvas import left_pad  # noqa: E402
from unmask.decoding.dispatch import decode  # noqa: E402
from unmask.errors import ConfigError  # noqa: E402
from unmask.likelihood import continuation_elbo, greedy_reproduces  # noqa: E402
from unmask.lm_eval import UnmaskLM  # noqa: E402

SAVED = DecodeConfig(max_new_tokens=12, steps=12, alg="entropy")  # the directory's generation_config.json
PROMPTS = ["def add(a, b):", "import os", "class Foo:"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    s = tokenizer.special
    model = make_model(4, sharpen=10.0, vocab_size=tokenizer.vocab_size, mask_token_id=s.mask, pad_token_id=s.pad,
                       eos_token_id=s.eos, bos_token_id=s.eos)
    return save_model(model, tmp_path_factory.mktemp("lm") / "model", tokenizer=tokenizer, generation=SAVED)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return unmask.load(model_dir)


@pytest.fixture(scope="module")
def lm(model_dir) -> UnmaskLM:
    return UnmaskLM(pretrained=str(model_dir), mc_num=16, mc_batch_size=8, seed=3)


def request(kind: str, *args) -> Instance:
    return Instance(kind, {}, tuple(args), 0)


# ----------------------------------------------------------------------------------------------------------
# settings


def test_registered_and_built_from_a_model_args_string(model_dir):
    assert get_model("unmask") is UnmaskLM
    lm = get_model("unmask").create_from_arg_string(
        f"pretrained={model_dir},steps=4,decoder=blocks,block_length=4,add_bos_token=true,mc_num=4",
        {"batch_size": "2", "max_batch_size": 64})
    assert lm.settings.batch_size == 2 and lm.settings.add_bos_token and lm.settings.mc_num == 4
    # the sampler defaults are the directory's generation_config.json, with model_args on top
    assert lm.decode == SAVED.replace(steps=4)
    assert lm.decoder == DecoderConfig(decoder="blocks", block_length=4)
    assert lm.get_model_info()["unmask"]["decode"]["steps"] == 4
    # --apply_chat_template: the directory's ChatML template
    assert "<|im_start|>" in lm.chat_template(True) and lm.chat_template(False) is None
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]).endswith(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("args, message", [
    ("bogus=1", "unknown model_args for unmask: bogus"),
    ("batch_size=auto", "auto is not supported"),
    ("mc_num=0", "mc_num must be a positive integer"),
    ("mc_eps=1.5", r"mc_eps must be a number in \(0, 1\)"),
    ("alg=nope", "alg must be one of"),
])
def test_bad_model_args_are_named(model_dir, args, message):
    with pytest.raises(ConfigError, match=message):
        UnmaskLM.create_from_arg_string(f"pretrained={model_dir},{args}")
    with pytest.raises(ConfigError, match="pretrained=DIR"):
        UnmaskLM.create_from_arg_string("mc_num=4")


# ----------------------------------------------------------------------------------------------------------
# loglikelihood


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a pair, written out: encode the whole, the continuation is what follows the context."""
    whole, head = tokenizer.encode(context + continuation), tokenizer.encode(context)
    return head, whole[len(head):]


def test_loglikelihood_is_the_elbo_with_a_seeded_generator(lm, loaded):
    model, tokenizer = loaded
    pairs = [("def add(a, b):", " return a + b"), ("import os", " os.path")]
    got = lm.loglikelihood([request("loglikelihood", *p) for p in pairs], disable_tqdm=True)
    for (context, continuation), (elbo, greedy) in zip(pairs, got):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        expected = continuation_elbo(model, ctx, cont, generator=torch.Generator().manual_seed(3), mc_num=16)
        assert elbo == pytest.approx(expected, rel=1e-6)
        assert greedy == greedy_reproduces(model, ctx, cont)
    # each request is scored alone: the same value in another company and order
    alone = lm.loglikelihood([request("loglikelihood", *pairs[1])], disable_tqdm=True)
    assert alone[0][0] == pytest.approx(got[1][0], rel=1e-6)


def test_is_greedy_true_for_the_one_shot_argmax(lm, loaded):
    model, tokenizer = loaded
    ctx = tokenizer.encode("def add(a, b):")
    canvas = torch.tensor([ctx + [tokenizer.special.mask] * 3])
    with torch.no_grad():
        logits = model(canvas)[0]
    greedy = [int(logits[i - 1].argmax()) for i in range(len(ctx), len(ctx) + 3)]
    [(_, is_greedy)] = lm._loglikelihood_tokens([(("", ""), ctx, greedy)])
    assert is_greedy


def test_loglikelihood_rolling_scores_the_whole_text_after_one_prefix_token(lm, loaded):
    model, tokenizer = loaded
    text = "def add(a, b):\n    return a + b\n"
    [got] = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)], disable_tqdm=True)
    expected = continuation_elbo(model, [tokenizer.special.eos], tokenizer.encode(text),
                                 generator=torch.Generator().manual_seed(3), mc_num=16)
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match="without windows"):
        lm.loglikelihood_rolling([request("loglikelihood_rolling", "x = 1\n" * 200)])


# ----------------------------------------------------------------------------------------------------------
# generate_until


def direct_texts(loaded, prompts, config, generator, batch_size) -> list[str]:
    """unmask's decode called directly: left-padded batches in order, one generator, text cut at stop ids."""
    model, tokenizer = loaded
    texts = []
    for lo in range(0, len(prompts), batch_size):
        ids, mask, _ = left_pad([tokenizer.encode(p) for p in prompts[lo:lo + batch_size]], tokenizer.special.pad)
        out = decode(model, ids, mask, config=config, decoder=DecoderConfig(), generator=generator,
                     stop_ids=tokenizer.special.stop_ids())
        texts += [tokenizer.decode(row) for row in out.generated.tolist()]
    return texts


@pytest.mark.parametrize("batch_size", [1, 2])
def test_generate_until_equals_unmask_decode(model_dir, loaded, batch_size):
    lm = UnmaskLM(pretrained=str(model_dir), batch_size=batch_size, seed=5)
    kwargs = {"until": [], "max_gen_toks": 6, "temperature": 0.7, "do_sample": True}
    got = lm.generate_until([request("generate_until", p, dict(kwargs)) for p in PROMPTS], disable_tqdm=True)
    # max_gen_toks sets the length and keeps the saved tokens per step (12 steps for 12 tokens -> 6 for 6)
    config = SAVED.replace(max_new_tokens=6, steps=6, temperature=0.7)
    generator = torch.Generator().manual_seed(5)
    assert got == direct_texts(loaded, PROMPTS, config, generator, batch_size)
    assert any(got)


def test_until_cuts_at_the_earliest_stop_string(lm, loaded):
    greedy = {"until": [], "do_sample": False}
    [raw] = lm.generate_until([request("generate_until", PROMPTS[0], greedy)], disable_tqdm=True)
    assert raw == direct_texts(loaded, PROMPTS[:1], SAVED.replace(temperature=0.0), torch.Generator(), 1)[0]
    assert len(raw) >= 6, raw
    early, late = raw[2:4], raw[-2:]
    [cut] = lm.generate_until([request("generate_until", PROMPTS[0], {"until": [late, early]})], disable_tqdm=True)
    assert cut == raw[:min(raw.find(early), raw.find(late))]
    [one] = lm.generate_until([request("generate_until", PROMPTS[0], {"until": early})], disable_tqdm=True)
    assert one == cut


# ----------------------------------------------------------------------------------------------------------
# add_bos_token


def test_add_bos_token_prepends_the_bos_to_every_context(model_dir, loaded, monkeypatch):
    _, tokenizer = loaded
    bos = tokenizer.special.bos
    plain = UnmaskLM(pretrained=str(model_dir), mc_num=2)
    with_bos = UnmaskLM(pretrained=str(model_dir), mc_num=2, add_bos_token=True)
    ids = tokenizer.encode("def f(x):")
    assert plain.tok_encode("def f(x):") == ids
    assert with_bos.tok_encode("def f(x):") == [bos, *ids]
    assert with_bos.tok_encode(tokenizer.backend.decode([bos], skip_special_tokens=False) + "def f(x):") == [bos, *ids]

    seen = []
    for lm in (plain, with_bos):
        monkeypatch.setattr(lm, "score", lambda ctx, cont: seen.append((ctx, cont)) or (0.0, False))
        lm.loglikelihood([request("loglikelihood", "def f(x):", " return x")], disable_tqdm=True)
        lm.loglikelihood([request("loglikelihood", "", "x = 1")], disable_tqdm=True)
    (ctx_plain, cont), (empty_plain, _), (ctx_bos, cont_bos), (empty_bos, _) = seen
    assert ctx_bos == [bos, *ctx_plain] and cont_bos == cont
    assert empty_plain == [tokenizer.special.eos] and empty_bos == [bos]

    prompts = []
    import unmask.lm_eval as module

    def spy(model, ids, mask, **kwargs):
        prompts.append(ids[mask.bool()].tolist())
        return decode(model, ids, mask, **kwargs)

    monkeypatch.setattr(module, "decode", spy)
    for lm in (plain, with_bos):
        lm.generate_until([request("generate_until", "def f(x):", {"until": [], "max_gen_toks": 2})])
    assert prompts == [ids, [bos, *ids]]


# ----------------------------------------------------------------------------------------------------------
# lm-eval end to end, over local tasks


def write_task(directory: Path, name: str, rows: list[dict], config: dict) -> None:
    data = directory / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {"task": name, "dataset_path": "json", "test_split": "test",
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(directory / "hf-cache")},
            **config}
    (directory / f"{name}.yaml").write_text(json.dumps(task))  # JSON is YAML


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, loaded) -> tuple[Path, list[str], list[list[float]]]:
    """A generate_until task whose answers match the model's direct greedy outputs on docs 0 and 2 (exact match
    2/3), and a multiple-choice task whose label is the best-scored choice on doc 0 only (acc 1/2)."""
    model, tokenizer = loaded
    directory = tmp_path_factory.mktemp("tasks")
    outputs = [text.split("\n")[0] for text in direct_texts(loaded, PROMPTS, SAVED.replace(temperature=0.0),
                                                            torch.Generator(), 1)]
    answers = [outputs[0], outputs[1] + "#", outputs[2]]
    write_task(directory, "unmask_gen", [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, answers)],
               {"output_type": "generate_until", "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
                "generation_kwargs": {"until": ["\n"], "do_sample": False},
                "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}]})
    questions = [("def add(a, b):", ["return a + b", "return a - b", "pass"]),
                 ("import", ["os", "sys", "json"])]
    scores = [[continuation_elbo(model, *encode_pair(tokenizer, q, " " + c), mc_num=16,
                                 generator=torch.Generator().manual_seed(3)) for c in choices]
              for q, choices in questions]
    labels = [max(range(3), key=scores[0].__getitem__), min(range(3), key=scores[1].__getitem__)]
    write_task(directory, "unmask_mc", [{"question": q, "choices": c, "label": y}
                                        for (q, c), y in zip(questions, labels)],
               {"output_type": "multiple_choice", "doc_to_text": "question", "doc_to_choice": "choices",
                "doc_to_target": "label", "metric_list": [{"metric": "acc"}]})
    return directory, outputs, scores


def test_simple_evaluate_metrics_are_the_models_outputs_scored_by_hand(model_dir, tasks):
    directory, outputs, scores = tasks
    results = simple_evaluate(model="unmask", model_args=f"pretrained={model_dir},mc_num=16,seed=3",
                              tasks=["unmask_gen", "unmask_mc"], batch_size=2, bootstrap_iters=0,
                              task_manager=TaskManager(include_path=str(directory), include_defaults=False),
                              log_samples=True)
    assert results["results"]["unmask_gen"]["exact_match,none"] == pytest.approx(2 / 3)
    assert results["results"]["unmask_mc"]["acc,none"] == pytest.approx(1 / 2)
    generated = sorted(results["samples"]["unmask_gen"], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in generated] == PROMPTS
    assert [s["filtered_resps"][0] for s in generated] == outputs
    choices = sorted(results["samples"]["unmask_mc"], key=lambda s: s["doc_id"])
    logged = [float(r[0]) for s in choices for r in s["filtered_resps"]]
    assert logged == pytest.approx([x for row in scores for x in row], rel=1e-6)
    assert results["config"]["unmask"]["settings"]["mc_num"] == 16


@pytest.mark.slow  # ~20 s: lm-eval's command line indexes its thousands of bundled task files first
def test_python_m_unmask_lm_eval_is_lm_evals_command_line_with_the_model(model_dir, tasks, tmp_path):
    directory, _, _ = tasks
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(unmask.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    command = ["run", "--model", "unmask", "--model_args", f"pretrained={model_dir},mc_num=16,seed=3", "--tasks",
               "unmask_mc", "--device", "cpu", "--include_path", str(directory), "--output_path", str(tmp_path / "out")]
    run = subprocess.run([sys.executable, "-m", "unmask.lm_eval", *command], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [result] = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(result.read_text())["results"]["unmask_mc"]["acc,none"] == pytest.approx(1 / 2)
