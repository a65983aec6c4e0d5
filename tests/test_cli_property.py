"""Random values for every flag of every command: exit 0 or 2, one line on stderr, no traceback, nothing left behind.

The flags are read from the argparse parser, so a new command or flag is covered the day it is
added. ``main()`` runs in this process; the inputs that would start real work (the data, the
checkpoint, the images) are paths that do not exist, so each command fails fast after parsing
and its first checks, which is where bad values must be caught.
"""

import argparse
import contextlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnkit.cli.main import build_parser, main

PARSER = build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
# Commands whose work, even on a missing input, is not a fast failure: models builds every architecture
# (meta device, about a second) and has one switch, so a few examples cover it.
EXAMPLES = {"models": 3, "completion": 6}
# Given last, so whatever random value came before, the command reads missing data rather than the built-in digits.
MISSING_DATA = {"train": ["--data=missing-data"], "compare": ["--data=missing-data"]}
# Relative names only (no / or ~): whatever a command writes lands in the example's own working directory.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="/~\x00", exclude_categories=["Cs"]), max_size=12)
NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "0.5", "1e309", "1e-320", "", " 3", "0x10", "1_000"]),
)


def flag_values(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    """Random command-line words for one flag: the bare switch, or ``--flag=VALUE`` with numbers, text or a choice."""
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        return st.just([flag])
    values = st.one_of(NUMBERS, TEXT, *([st.sampled_from([str(c) for c in action.choices])] if action.choices else []))
    return values.map(lambda value: [f"{flag}={value}"])


def positional_values(action: argparse.Action) -> list[str]:
    """A missing path (run, images, data) for each positional; a valid choice where it has choices."""
    if action.choices:
        return [str(next(iter(action.choices)))]
    return ["missing-input"]


def command_words(name: str) -> st.SearchStrategy[list[str]]:
    parser = COMMANDS[name]
    flags = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    positionals = [word for a in parser._actions if not a.option_strings for word in positional_values(a)]
    chosen = st.lists(st.sampled_from(flags), max_size=4, unique=True) if flags else st.just([])
    return chosen.flatmap(
        lambda actions: st.tuples(*[flag_values(a) for a in actions]).map(
            lambda words: [name, *positionals, *[w for pair in words for w in pair], *MISSING_DATA.get(name, [])]
        )
    )


def run_in(directory: Path, argv: list[str]) -> tuple[int, str]:
    """``cnnkit ARGV`` in-process with ``directory`` as the working directory: (exit code, stderr)."""
    stdout, stderr, previous = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(directory)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit:  # argparse: --help, --version and parse errors
                code = exit.code
    finally:
        os.chdir(previous)
    return code, stderr.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_random_flag_values_exit_0_or_2_with_one_line_and_write_nothing(command):
    repository = sorted(set(os.listdir()) - {".hypothesis"})  # hypothesis keeps its own cache there

    @settings(
        max_examples=EXAMPLES.get(command, 20),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(argv=command_words(command))
    def check(argv):
        with tempfile.TemporaryDirectory() as root:
            work = Path(root) / "work"
            work.mkdir()
            code, stderr = run_in(work, argv)
            assert code in (0, 2), (argv, code, stderr)
            assert "Traceback" not in stderr, (argv, stderr)
            if code == 2:
                assert len(stderr.strip().splitlines()) == 1, (argv, stderr)
                assert stderr.startswith("cnnkit: error: "), (argv, stderr)
                assert not any(work.iterdir()), (argv, sorted(work.rglob("*")))  # a failed command leaves nothing
            assert os.listdir(root) == ["work"], argv  # nothing written beside the working directory

    check()
    assert sorted(set(os.listdir()) - {".hypothesis"}) == repository  # nor in the repository the tests run from
