"""``cnnkit completion bash|zsh|fish``: scripts generated from the parser, so every command and flag completes."""

import shutil
import subprocess

import pytest

from cnnkit.cli.complete import completion_script, describe_commands
from cnnkit.cli.main import build_parser


def complete_in_bash(script: str, *words: str) -> list[str]:
    """What bash offers for ``cnnkit WORDS`` (the last word being typed), by calling the completion function."""
    array = " ".join(f"'{word}'" for word in ("cnnkit", *words))
    program = f'{script}\nCOMP_WORDS=({array}); COMP_CWORD={len(words)}; _cnnkit_complete; echo "${{COMPREPLY[@]}}"'
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completion_bash_names_every_command_and_every_train_flag():
    parser = build_parser()
    script = completion_script(parser, "bash")
    commands = describe_commands(parser)
    assert {command.name for command in commands} >= {"train", "predict", "serve", "completion"}
    for command in commands:
        assert f"{command.name}) flags=" in script
    train = parser._subparsers._group_actions[0].choices["train"]
    line = next(line for line in script.splitlines() if line.strip().startswith("train) flags="))
    assert set(line.split('"')[1].split()) == {flag for action in train._actions for flag in action.option_strings}
    assert "--label-smoothing" in line and "--memory-format" in line


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_completion_bash_completes_commands_flags_and_choices():
    script = completion_script(build_parser(), "bash")
    assert complete_in_bash(script, "tr") == ["train"]
    assert set(complete_in_bash(script, "train", "--res")) == {"--resize", "--resume"}
    assert complete_in_bash(script, "train", "--resize", "") == ["crop", "squash", "pad"]
    assert complete_in_bash(script, "evaluate", "--split", "v") == ["val"]
    assert "--top-k" in complete_in_bash(script, "predict", "--")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_are_valid_shell(shell, tmp_path):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    path = tmp_path / f"cnnkit.{shell}"
    path.write_text(completion_script(build_parser(), shell))
    result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True, timeout=60)  # parse only
    assert result.returncode == 0, result.stderr


def test_completion_zsh_and_fish_name_every_flag_with_its_choices():
    parser = build_parser()
    zsh, fish = completion_script(parser, "zsh"), completion_script(parser, "fish")
    assert zsh.startswith("#compdef cnnkit") and "'--resize[" in zsh and ":value:(crop squash pad)'" in zsh
    assert "-l resize -x -a 'crop squash pad'" in fish
    for command in describe_commands(parser):
        assert f"        {command.name}) _arguments" in zsh
        assert f"-a {command.name} " in fish


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_completion_fish_completes_commands_flags_and_choices(tmp_path):
    path = tmp_path / "cnnkit.fish"
    path.write_text(completion_script(build_parser(), "fish"))

    def offered(line: str) -> set[str]:
        command = f"source {path}; complete -C'{line}'"
        result = subprocess.run(["fish", "-c", command], capture_output=True, text=True, timeout=60)
        return {row.split("\t")[0] for row in result.stdout.splitlines()}

    assert offered("cnnkit tr") == {"train"}
    assert offered("cnnkit train --res") == {"--resize", "--resume"}
    assert offered("cnnkit train --resize ") == {"crop", "squash", "pad"}


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_completion_zsh_registers_for_cnnkit(tmp_path):
    path = tmp_path / "_cnnkit"
    path.write_text(completion_script(build_parser(), "zsh"))
    program = f"autoload -U compinit; compinit -u -D; source {path}; print -r -- $_comps[cnnkit]"
    result = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "_cnnkit", result.stderr
    assert "{-h,--help}'[" in path.read_text()  # braces outside the quotes, so zsh expands one spec per name
