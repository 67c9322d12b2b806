"""Model cards over any number of training stages: objective in words, val response loss, the adapted-from-AR
intro, Wilson intervals and the decoder of each evaluation, the recommended decoding, and the CLI's stage order."""

from __future__ import annotations

import json

import pytest

from unmask.modelcard import main, objective_words, render_model_card, run_summary

CONFIG = {"model_type": "Dream", "vocab_size": 100, "hidden_size": 16, "intermediate_size": 32,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 10000.0,
          "tie_word_embeddings": False}

AR_PRETRAIN = ({"data": "stdlib", "stage": "pretrain", "objective": "autoregressive", "preset": "small",
                "adapt_from_ar": False, "anneal_steps": 0, "t_method": "antithetic", "lr": 0.001},
               [{"step": 10, "loss": 8.0, "tokens": 4000, "tokens_per_s": 100.0, "epoch": 0.5},
                {"step": 20, "loss": 6.0, "tokens": 8000, "tokens_per_s": 200.0, "epoch": 1.0, "val_loss": 6.5}])
AR_SFT = ({"data": "runs/p/sft.jsonl", "stage": "sft", "objective": "autoregressive", "init_from": "runs/p/stage1",
           "preset": "small"},
          [{"step": 5, "loss": 2.0, "tokens": 1200, "tokens_per_s": 60.0, "epoch": 0.25},
           {"step": 10, "loss": 1.5, "tokens": 2400, "tokens_per_s": 40.0, "epoch": 0.5, "val_loss": 1.75}])
ADAPT = ({"data": "runs/p/sft.jsonl", "stage": "sft", "objective": "diffusion", "adapt_from_ar": True,
          "anneal_steps": 500, "init_from": "runs/p/ar-twin", "t_method": "antithetic", "mask_eps": 0.001},
         [{"step": 100, "loss": 3.0, "tokens": 6000, "tokens_per_s": 50.0, "epoch": 1.0},
          {"step": 200, "loss": 0.5, "tokens": 12000, "tokens_per_s": 100.0, "epoch": 2.0, "val_loss": 0.25,
           "val_response_loss": 0.9}])


def _model(path, **changes):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({**CONFIG, **changes}))
    return path


def _run(path, fixture):
    config, rows = fixture
    path.mkdir()
    (path / "run_config.json").write_text(json.dumps(config))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stages(tmp_path, *named):
    return [(name, run_summary(_run(tmp_path / name, fixture))) for name, fixture in named]


def test_stage_rows_say_the_objective_data_losses_and_compute(tmp_path):
    stages = _stages(tmp_path, ("stage1-ar", AR_PRETRAIN), ("ar-sft", AR_SFT), ("diffusion-sft", ADAPT))
    card = render_model_card(_model(tmp_path / "m"), stages=stages, evals=[], command="make x")
    # compute = 4000/100 + 4000/200 = 60 s; 1200/60 + 1200/40 = 50 s; 6000/50 + 6000/100 = 180 s (hand values)
    rows = [line for line in card.splitlines() if line.startswith("| ") and "min |" in line]
    assert rows == [
        "| stage1-ar | AR next-token | stdlib | 20 | 8,000 | 1.00 | 8.000 | 6.000 | 6.500 | n/a | 1.0 min |",
        "| ar-sft | AR next-token | sft.jsonl (loss on the response and its end token) | 10 | 2,400 | 0.50 | 2.000 "
        "| 1.500 | 1.750 | n/a | 0.8 min |",
        "| diffusion-sft | AR→diffusion adaptation (anneal_steps 500) | sft.jsonl (prompt never masked) | 200 | "
        "12,000 | 2.00 | 3.000 | 0.500 | 0.250 | 0.900 | 3.0 min |",
    ]
    # the noise schedule is not an AR stage's setting; the anneal is the adaptation's
    assert "- **stage1-ar**: preset=small, lr=0.001\n" in card
    assert ("- **diffusion-sft**: init_from=runs/p/ar-twin, t_method=antithetic, mask_eps=0.001, adapt_from_ar=True, "
            "anneal_steps=500\n") in card
    assert "AR losses are next-token cross-entropy per token" in card and "masked-diffusion ELBO" in card
    assert "compare trends within a kind" in card  # both kinds present: warn that the levels differ in kind


def test_intro_says_adapted_from_ar_only_when_an_ar_stage_precedes_an_adapting_one(tmp_path):
    model = _model(tmp_path / "m")
    adapted = render_model_card(model, stages=_stages(tmp_path, ("ar", AR_PRETRAIN), ("adapt", ADAPT)), evals=[],
                                command="make x")
    intro = adapted.split("# m\n\n")[1].split("\n")[0]
    assert "adapted from an autoregressive model" in intro and "arXiv 2506.20639" in intro
    assert "Qwen2.5-Coder" in intro and "`make x`" in intro
    plain_diffusion = (dict(ADAPT[0], adapt_from_ar=False, anneal_steps=0), ADAPT[1])
    for named in ((("adapt2", ADAPT),), (("ar2", AR_PRETRAIN), ("diff", plain_diffusion)),
                  (("adapt3", ADAPT), ("ar3", AR_PRETRAIN))):
        card = render_model_card(model, stages=_stages(tmp_path, *named), evals=[], command="make x")
        intro = card.split("# m\n\n")[1].split("\n")[0]
        assert "adapted" not in intro and "trained on 2 CPU cores by `make x`" in intro, named



def test_a_block_diffusion_card_says_so_and_takes_its_own_role(tmp_path):
    model = _model(tmp_path / "m", block_size=8)
    card = render_model_card(model, stages=_stages(tmp_path, ("ar", AR_PRETRAIN), ("adapt", ADAPT)), evals=[],
                             command="make x", role="The hybrid.")
    intro = card.split("# m\n\n")[1].split("\n")[0]
    assert "block-diffusion language model" in intro and "blocks of 8 tokens" in intro
    assert "causal to bidirectional inside each block" in intro and intro.endswith("The hybrid.")
    assert "default model of `make demo`" not in intro and "(bidirectional Qwen2 stack" not in intro
    assert "--decoder parallel --block-length 8" in card and "--decoder reference" not in card
    full = render_model_card(_model(tmp_path / "f"), stages=[], evals=[], command="make x")
    intro = full.split("# f\n\n")[1].split("\n")[0]
    assert "(bidirectional Qwen2 stack" in intro and "default model of `make demo`" in intro

def _eval(passed, tasks, per_task, decoder=None, stop_last=False, with_counts=True):
    summary = {"benchmark": "synthetic", "tasks": tasks, "samples_per_task": per_task,
               "pass@k": {"pass@1": passed / (tasks * per_task)}}
    if with_counts:
        summary |= {"samples": tasks * per_task, "verdicts": {"passed": passed}}
    decode = {"max_new_tokens": 64, "steps": 64, "alg": "entropy", "temperature": 0.0, "stop_last": stop_last}
    return {"summary": summary, "eval": {"seed": 0}, "decode": decode, "decoder": decoder}


def test_eval_rows_have_the_decoder_and_a_wilson_interval(tmp_path):
    evals = [_eval(10, 200, 1, decoder={"decoder": "blocks", "block_length": 8}, stop_last=True),
             _eval(0, 10, 4, with_counts=False), _eval(1, 24, 1, decoder={"decoder": "parallel", "block_length": 32})]
    card = render_model_card(_model(tmp_path / "m"), evals=evals, command="make x")
    # Wilson 95%: 10/200 -> [0.02738, 0.08958]; 0/40 -> [0, z²/(40+z²)] = [0, 0.08762]; 1/24 -> [0.00739, 0.20242]
    assert ("| synthetic (seed 0) | 200 | 1 | 0.050 | [0.027, 0.090] | blocks, block 8, stop_last | 64 tokens, 64 "
            "steps, alg entropy, temperature 0.0 |") in card
    assert "| synthetic (seed 0) | 10 | 4 | 0.000 | [0.000, 0.088] | reference |" in card
    assert "| synthetic (seed 0) | 24 | 1 | 0.042 | [0.007, 0.202] | parallel, block 32 |" in card
    causal = render_model_card(_model(tmp_path / "ar", model_type="qwen2"), evals=evals[:1], command="make x")
    assert "| [0.027, 0.090] | left to right (AR) | 64 tokens, temperature 0.0 |" in causal
    assert "autoregressive (causal) language model" in causal and "masked diffusion language" not in causal


def test_use_section_states_the_recommended_decoding(tmp_path):
    model = _model(tmp_path / "m")
    card = render_model_card(model, evals=[], command="make x")
    assert "Recommended decoding" not in card and "--no-stop-last" not in card
    generation = {"max_new_tokens": 64, "steps": 32, "alg": "entropy", "temperature": 0.0, "top_p": None}
    (model / "generation_config.json").write_text(json.dumps(generation))
    use = render_model_card(model, evals=[], command="make x").split("## Use")[1]
    assert ("decoding (generation_config.json, the default of `unmask generate` and `unmask eval`): 64 tokens, "
            "32 steps, alg entropy, temperature 0.0.\n") in use
    assert "stop_last" not in use and "--decoder" not in use
    generation |= {"stop_last": True, "decoder": "blocks", "block_length": 8}
    (model / "generation_config.json").write_text(json.dumps(generation))
    use = render_model_card(model, evals=[], command="make x").split("## Use")[1]
    assert ("temperature 0.0, the blocks decoder with blocks of 8 tokens, stop_last on (no end-of-text or pad is "
            "committed while a mask lies to its left).") in use
    assert "--no-stop-last" in use and "--decoder reference" in use


def test_cli_keeps_stages_in_command_line_order_with_the_aliases(tmp_path, capsys):
    model = _model(tmp_path / "m")
    pre, adapt, sft = _run(tmp_path / "pre", AR_PRETRAIN), _run(tmp_path / "ad", ADAPT), _run(tmp_path / "s", AR_SFT)
    argv = [str(model), "--pretrain", str(pre), "--stage", f"adapt={adapt}", "--sft", str(sft), "--command", "x"]
    assert main(argv) == 0
    names = [line.split(" | ")[0] for line in (model / "README.md").read_text().splitlines() if "min |" in line]
    assert names == ["| pretrain", "| adapt", "| sft"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(model), "--stage", str(pre), "--command", "x"])
    assert exit_info.value.code == 2 and "NAME=RUN_DIR" in capsys.readouterr().err
    assert main([str(model), "--stage", f"x={tmp_path / 'missing'}", "--command", "x"]) == 2


def test_objective_words_name_every_training_choice():
    assert objective_words({"objective": "autoregressive"}) == "AR next-token"
    assert objective_words({}) == "masked diffusion"
    assert objective_words({"adapt_from_ar": True, "anneal_steps": 250}) == "AR→diffusion adaptation (anneal_steps 250)"
    assert objective_words({"block_mask_prob": 0.5, "block_mask_length": 8}) == (
        "masked diffusion, 50% semi-AR block rows (blocks of 8)")
