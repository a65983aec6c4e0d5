"""Shared flags of the ``cnnkit`` command: range-checked number types, one flag per config key, one-line errors.

Every numeric flag takes its type from :func:`number_type` (or :func:`config_type` for a
:class:`~cnnkit.config.TrainConfig` key), so a bad value is refused while the command line
is parsed, with the range in the message::

    cnnkit: error: --lr must be a finite number > 0 (got nan)

Example, for a new command's flag::

    parser.add_argument("--port", type=number_type(Range(int, 1, 65535)), default=8000)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from cnnkit.config import Range, TrainConfig
from cnnkit.errors import did_you_mean

# train --help shows the config keys in these groups, in this order (each key's group is in its metadata)
GROUPS = {
    "data": "data",
    "model": "model",
    "optimisation": "optimisation",
    "compute": "compute (where and how fast)",
    "output": "output",
}


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, ``cnnkit: error: ...``, with "did you mean" where it helps."""

    def error(self, message: str) -> NoReturn:
        match = re.fullmatch(r"argument (\S+): (.*)", message, flags=re.DOTALL)
        if match and match.group(2).startswith("must "):  # a flag's own rule: "--lr must be ..."
            message = " ".join(match.groups())
        elif match and match.group(2).startswith("unknown command"):
            message = match.group(2)
        elif match and match.group(2) == "expected one argument":  # also what "--lr -1e-3" gives: "-1e-3" looks a flag
            message = f"{match.group(1)} needs a value (one that starts with '-' is written {match.group(1)}=VALUE)"
        print(f"cnnkit: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        self._commands = super().add_subparsers(**kwargs)
        return self._commands

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(namespace, "command", None)
            commands = getattr(self, "_commands", None)
            parser = commands.choices[command] if commands and command in commands.choices else self
            self.error(_unexpected(parser, extras))
        return namespace

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        names = [str(choice) for choice in action.choices]
        hint = did_you_mean(str(value), names)
        if isinstance(action, argparse._SubParsersAction):
            reason = f"unknown command {value!r}{hint}; commands: {', '.join(names)}"
        else:
            reason = f"must be one of {', '.join(names)} (got {value!r}){hint}"
        raise argparse.ArgumentError(action, reason)


def _unexpected(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """Why the left-over words were not understood: ``unknown flag --lrr for cnnkit train (did you mean '--lr'?)``."""
    flags = [flag for action in parser._actions for flag in action.option_strings]
    unknown = [word.split("=")[0] for word in extras if word.startswith("-")]
    if unknown:  # the words after an unknown flag are most likely its value: not worth a reason of their own
        return "; ".join(f"unknown flag {word} for {parser.prog}{did_you_mean(word, flags)}" for word in unknown)
    return f"unexpected argument(s) {' '.join(extras)} for {parser.prog}"


def number_type(limits: Range) -> Callable[[str], int | float]:
    """An argparse ``type`` that reads a number and refuses one outside ``limits`` (NaN and infinity always).

    Example:
        >>> number_type(Range(int, 1))("3")
        3
    """

    def parse(text: str) -> int | float:
        try:
            value = limits.kind(text.strip())
        except ValueError:
            value = text
        if limits.problem(value):
            shown = text.strip() if isinstance(value, (int, float)) else repr(text)  # as typed: 2, not 2.0
            raise argparse.ArgumentTypeError(f"must be {limits.describe()} (got {shown})")
        return value

    return parse


def config_type(key: str) -> Callable[[str], Any] | None:
    """The argparse ``type`` of a TrainConfig key (its range from config.py), or None for a text key."""
    spec = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    if spec.metadata["range"]:
        return number_type(spec.metadata["range"])
    if "int" in str(spec.type):
        return number_type(Range(int))
    return None


def config_default(key: str) -> Any:
    """The default of a TrainConfig key, so other commands that take it say the same."""
    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == key)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig key, grouped as in :data:`GROUPS`; flags not given leave the config value alone."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for spec in dataclasses.fields(TrainConfig):
        group, text = groups[spec.metadata["group"]], spec.metadata["help"]
        if spec.type == "bool":
            group.add_argument(
                f"--{spec.name.replace('_', '-')}",
                dest=spec.name,
                action="store_true",
                default=argparse.SUPPRESS,
                help=text,
            )
            continue
        says_default = "default" in text or spec.default is None
        group.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            type=config_type(spec.name),
            choices=spec.metadata["choices"],
            default=argparse.SUPPRESS,
            help=text if says_default else f"{text} (default: {spec.default})",
        )
