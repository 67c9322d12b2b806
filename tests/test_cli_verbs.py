"""The ``unmask`` verbs as parsed: the model is given the same way everywhere, options go anywhere, help is quick
(no torch at parse time) and says where the sampler defaults come from. Nothing here loads a model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unmask.cli import VERBS, build_parser, parse
from unmask.commands.common import CLIError, resolve_model

# (argv, the model it names): the positional form and the older --model form of every verb that runs a model
MODEL_FORMS = [
    (["generate", "M", "def f():", "--steps", "3"], {"model": "M", "prompt": "def f():"}),
    (["generate", "--steps", "3", "--model", "M", "def f():"], {"model": "M", "prompt": "def f():"}),
    (["eval", "M", "--benchmark", "mbpp"], {"model": "M"}),
    (["eval", "--benchmark", "mbpp", "--model", "M"], {"model": "M"}),
    (["infill", "M", "--prefix", "a.py"], {"model": "M"}),
    (["infill", "--model", "M", "--prefix", "a.py"], {"model": "M"}),
    (["repair", "M", "f.py", "--tests", "t.py"], {"model": "M", "file": "f.py"}),
    (["repair", "f.py", "--model", "M", "--tests", "t.py"], {"model": "M", "file": "f.py"}),
    (["serve", "M", "--port", "0"], {"model": "M"}),
    (["serve", "--port", "0", "--model", "M"], {"model": "M"}),
    (["arness", "M", "--temperatures", "0.5"], {"model": "M"}),
    (["arness", "--model", "M", "--temperatures", "0.5"], {"model": "M"}),
]
POSITIONALS = {"generate": ("prompt",), "repair": ("file",)}


@pytest.mark.parametrize(("argv", "expected"), MODEL_FORMS)
def test_the_model_is_positional_or_an_option_in_every_verb(argv, expected):
    args = parse(argv)
    resolve_model(args, POSITIONALS.get(argv[0], ()))
    assert {k: getattr(args, k) for k in expected} == expected


def test_train_and_rl_read_a_positional_model():
    from unmask.commands import rl, train

    assert train.settings(parse(["train", "M", "--preset", "test"]))["init_from"] == "M"
    assert train.settings(parse(["train", "--init-from", "M"]))["init_from"] == "M"
    assert "init_from" not in train.settings(parse(["train", "--preset", "test"]))
    assert rl.settings(parse(["rl", "M", "--max-steps", "1"]))["model"] == "M"
    assert rl.settings(parse(["rl", "--max-steps", "1", "--model", "M"]))["model"] == "M"
    with pytest.raises(CLIError, match="given twice"):
        train.settings(parse(["train", "M", "--init-from", "N"]))
    with pytest.raises(CLIError, match="given twice"):
        rl.settings(parse(["rl", "M", "--model", "N"]))


def test_train_and_rl_resolve_settings_the_same_way(tmp_path):
    """flags > --config FILE > the resumed run's saved config, for both run verbs."""
    from unmask.commands import rl, train

    (tmp_path / "c.json").write_text('{"max_steps": 7, "seed": 3, "run_dir": "%s"}' % (tmp_path / "run"))
    (tmp_path / "run").mkdir()
    for verb, saved in ((rl, "rl_config.json"), (train, "run_config.json")):
        (tmp_path / "run" / saved).write_text('{"max_steps": 1, "lr": 0.5, "log_every": 9}')
        argv = [verb.__name__.rsplit(".", 1)[1], "--config", str(tmp_path / "c.json"), "--seed", "4", "--resume"]
        values = verb.settings(parse(argv))
        assert (values["max_steps"], values["seed"], values["lr"], values["log_every"]) == (7, 4, 0.5, 9)


def test_argument_errors_are_one_line_errors_not_exits():
    with pytest.raises(CLIError, match=r"^unmask eval: argument --samples: invalid int value: 'x'"):
        parse(["eval", "M", "--samples", "x"])
    with pytest.raises(CLIError, match=r"invalid choice: 'nope' \(choose from 'none', 'prefix', 'dual'\)"):
        parse(["generate", "M", "x", "--cache", "nope"])
    with pytest.raises(CLIError, match="the following arguments are required: VERB"):
        parse([])


def test_building_every_parser_imports_no_torch():
    # A fresh interpreter: this test process has torch loaded already.
    code = ("import sys\nfrom unmask.cli import VERBS, build_parser\nbuild_parser()\n"
            "for verb in VERBS:\n    build_parser(verb).format_help()\n"
            "heavy = {'torch', 'unmask.train', 'unmask.rl.loop', 'unmask.model', 'unmask.decoding'}\n"
            "print(sorted(m for m in sys.modules if m in heavy or m.startswith(('torch.', 'unmask.decoding.'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["rl", "--help"], ["generate", "--help"]])
def test_help_imports_no_torch(argv):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "unmask.cli", *argv], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "usage: unmask" in proc.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert "unmask.commands.common" in imported and not [m for m in imported if m == "torch" or m.startswith("torch.")]


def test_sampler_help_names_the_model_as_the_source_of_defaults():
    text = build_parser("generate").format_help()
    assert "(default: 256)" not in text  # the real default is the model's (64 for the shipped model)
    assert "generation_config.json, else 256" in " ".join(text.split())
    assert "generation_config.json, else reference" in " ".join(text.split())


def test_top_level_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in VERBS)
