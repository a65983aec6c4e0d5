"""Ctrl-C during training steps: it takes effect at the next step boundary, where a saved state resumes exactly.

A ``KeyboardInterrupt`` raised in the middle of a step can leave the weights half
updated, so no exact state could be saved then. While a :class:`DeferredInterrupts` is
active, the first Ctrl-C only sets a flag; the loop calls :meth:`DeferredInterrupts.check`
after each step, which raises :class:`StepInterrupt` there. A second Ctrl-C stops at once.

The processes of a distributed run must all stop after the same step, or the others would
wait for the one that left: there each step's all-reduce carries every rank's flag, and
:meth:`DeferredInterrupts.agree` hands back whether any was set; only that stops them.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class StepInterrupt(KeyboardInterrupt):
    """Ctrl-C taken between two steps: every step so far is complete, so the state saved now is exact."""


class DeferredInterrupts:
    """Hold a Ctrl-C until the running step is done (a context manager; a no-op outside the main thread).

    Only Python's default SIGINT handler is replaced, so a program that installed its own keeps it.

    Args:
        shared: Several processes run the steps together: stop only where :meth:`agree` says. Defaults to False.
    """

    def __init__(self, shared: bool = False) -> None:
        self.pending = False
        self.shared = shared
        self._agreed = False
        self._previous: object = None

    def __enter__(self) -> DeferredInterrupts:
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.pending:  # a second Ctrl-C: the user does not want to wait
            raise KeyboardInterrupt
        self.pending = True

    def agree(self, anyone: bool) -> None:
        """Record whether Ctrl-C reached any of the processes (summed with this step's numbers)."""
        self._agreed = anyone

    def check(self) -> None:
        """Raise :class:`StepInterrupt` if Ctrl-C was pressed since the last check (on any process, when shared)."""
        if self._agreed if self.shared else self.pending:
            self.pending = self._agreed = False
            raise StepInterrupt

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if kind is None:
            self.check()
