"""The ``cnnkit`` command line: one module per group of commands."""

from cnnkit.cli.main import main

__all__ = ["main"]
