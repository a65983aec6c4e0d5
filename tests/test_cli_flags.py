"""The command line people expect, run in-process: range-checked flags, "did you mean", grouped help, models --json."""

import dataclasses
import json
import re

import pytest

from cnnkit.cli.main import build_parser, main
from cnnkit.config import TrainConfig, value_problem


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``cnnkit ARGS`` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, stderr: str, expected: str) -> None:
    assert code == 2 and "Traceback" not in stderr
    assert stderr.splitlines() == [f"cnnkit: error: {expected}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--lr", "nan"], "--lr must be a finite number > 0 (got nan)"),
        (["train", "--label-smoothing", "2"], "--label-smoothing must be a finite number in [0, 1) (got 2)"),
        (["train", "--weight-decay", "-1"], "--weight-decay must be a finite number >= 0 (got -1)"),
        (["train", "--epochs", "two"], "--epochs must be an integer >= 1 (got 'two')"),
        (["train", "--img-size", "100000"], "--img-size must be an integer in [4, 4096] (got 100000)"),
        (["train", "--clip-grad-norm", "inf"], "--clip-grad-norm must be a finite number > 0 (got inf)"),
        (["train", "--channels", "2"], "--channels must be one of 1, 3 (got 2)"),
        (["compare", "--lr=-inf"], "--lr must be a finite number > 0 (got -inf)"),
        (["train", "--lr", "-1"], "--lr must be a finite number > 0 (got -1)"),
        (["train", "--lr", "-inf"], "--lr needs a value (one that starts with '-' is written --lr=VALUE)"),
        (["compare", "--train-size", "0"], "--train-size must be an integer >= 1 (got 0)"),
        (["check", "data", "--max-bad-share", "1.5"], "--max-bad-share must be a finite number in [0, 1] (got 1.5)"),
        (["predict", "run", "a.png", "--top-k", "0"], "--top-k must be an integer >= 1 (got 0)"),
        (["explain", "run", "a.png", "--top-k", "1.5"], "--top-k must be an integer >= 1 (got '1.5')"),
        (["summary", "convnet", "--num-classes", "0"], "--num-classes must be an integer in [1, 100000] (got 0)"),
        (["benchmark", "run", "--seconds", "0"], "--seconds must be a finite number in (0, 3600] (got 0)"),
    ],
)
def test_cli_numeric_flags_are_range_checked_while_parsing(capsys, args, expected):
    assert_one_line_error(*run_main(capsys, *args)[::2], expected)


@pytest.mark.slow
def test_cli_train_flags_refuse_exactly_what_the_config_refuses(capsys):
    """One home for each rule: the flag type and TrainConfig.check agree on values at and past every bound."""
    for spec in dataclasses.fields(TrainConfig):
        limits = spec.metadata["range"]
        if limits is None:
            continue
        edges = [bound + step for bound in (limits.low, limits.high) if bound is not None for step in (-1, 0, 1)]
        for value in [*edges, 0.5]:
            value = limits.kind(value) if limits.kind is int or not float(value).is_integer() else value
            if limits.kind is int and value != int(value):
                continue
            code, _, _ = run_main(capsys, "train", f"--{spec.name.replace('_', '-')}={value}", "--help")
            config_allows = value_problem(spec, value) is None
            assert (code == 0) is config_allows, (spec.name, value)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trian"], r"unknown command 'trian' \(did you mean 'train'\?\); commands: train, evaluate, .*"),
        (["train", "--lrr", "0.1"], r"unknown flag --lrr for cnnkit train \(did you mean '--lr'\?\)"),
        (
            ["train", "--resize", "crp"],
            r"--resize must be one of crop, squash, pad \(got 'crp'\) \(did you mean 'crop'\?\)",
        ),
        (["models", "--jsno"], r"unknown flag --jsno for cnnkit models \(did you mean '--json'\?\)"),
    ],
)
def test_cli_mistypes_get_did_you_mean(capsys, args, expected):
    code, _, stderr = run_main(capsys, *args)
    assert code == 2 and len(stderr.splitlines()) == 1
    assert re.fullmatch(f"cnnkit: error: {expected}", stderr.strip()), stderr


def test_cli_mistyped_model_name_gets_did_you_mean(capsys, tmp_path):
    code, _, stderr = run_main(capsys, "summary", "resnet-18")  # not resnet19: as close to resnet1d as to resnet18
    assert (
        code == 2 and len(stderr.splitlines()) == 1 and "unknown model 'resnet-18' (did you mean 'resnet18'?)" in stderr
    )


def test_train_help_is_grouped_shows_choices_and_says_each_default_once(capsys):
    code, help_text, _ = run_main(capsys, "train", "--help")
    assert code == 0
    titles = [line.rstrip(":") for line in help_text.splitlines() if line and not line[0].isspace()]
    assert [t for t in titles if t in ("data", "model", "optimisation", "output") or t.startswith("compute")] == [
        "data",
        "model",
        "optimisation",
        "compute (where and how fast)",
        "output",
    ]
    assert "--resize {crop,squash,pad}" in help_text and "--precision {auto,fp32,bf16,fp16}" in help_text
    entries = re.split(r"\n  (?=--)", help_text.split("data:", 1)[1])
    for entry in entries:
        assert entry.count("default") <= 1, entry


@pytest.mark.slow
def test_models_json_lists_every_registered_model_with_its_facts(capsys):
    from cnnkit.models import list_models

    code, stdout, _ = run_main(capsys, "models", "--json")
    rows = json.loads(stdout)
    assert code == 0 and [row["name"] for row in rows] == list_models(task=None)
    convnet = next(row for row in rows if row["name"] == "convnet")
    assert convnet["parameters"] > 1000 and convnet["pretrained"] is False and convnet["modality"] == "image"
    assert next(row for row in rows if row["name"] == "resnet18")["parameters"] == 11_181_642  # torchvision's count


def test_cli_parser_needs_no_torch():
    """Parsing (and so --help and completion) stays free of torch: the range types come from config, not models."""
    import subprocess
    import sys

    code = "import sys; from cnnkit.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_cli_every_command_is_dispatched():
    from cnnkit.cli.main import COMMANDS

    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(COMMANDS)


def test_cli_every_numeric_flag_has_a_range_checked_type():
    """A plain ``type=float`` lets nan, inf and negatives through: every number goes through flags.number_type."""
    not_yet = {("export", "--atol"), ("export", "--max-accuracy-drop")}  # the export parser's owner is told
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    plain = {
        (name, action.option_strings[-1])
        for name, parser in subparsers.choices.items()
        for action in parser._actions
        if action.type in (int, float)
    }
    assert plain <= not_yet, sorted(plain - not_yet)
