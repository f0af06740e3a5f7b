"""SIGINT and SIGTERM during a run.

A signal interrupts the run (raises ``Interrupted``) only inside an ``interruptible()`` block: the preflight and a
benchmark's lm-eval work, which the run can abandon. Everywhere else (recording a finished benchmark, stopping the
worker, writing the summary, the notification) a signal is only recorded: a pending signal is raised at the start
of the next interruptible block, and one that comes after the last benchmark finished changes nothing (the run is
complete; it exits with its summary's code). Only the first signal is ever raised, so a second one (Ctrl-C twice,
TERM then TERM) cannot abort the clean-up the first one started.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

from evalchemy.errors import Interrupted

HANDLED = (signal.SIGINT, signal.SIGTERM)


class SignalGuard:
    def __init__(self) -> None:
        self.received: list[int] = []  # every signal, in order
        self.raised = False  # Interrupted was raised once: never again
        self._depth = 0
        self._previous: dict[int, object] = {}

    def install(self) -> "SignalGuard":
        for signum in HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Put back the handlers found at ``install`` (for in-process callers; the CLI's own process keeps the
        guard until it exits, so that no late signal kills it with a code its summary does not state)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def ignore_from_now(self) -> None:
        """For the run's own process as it exits: Python puts back the default handlers (death by the signal) while
        it shuts down, but keeps "ignore"; so a signal that comes now cannot replace the exit code."""
        if self._previous:
            for signum in HANDLED:
                signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum: int, _frame) -> None:
        self.received.append(signum)
        if self._depth and not self.raised:
            self.raised = True
            raise Interrupted(signum)

    @property
    def pending(self) -> int | None:
        """The first signal received, if it has not been raised."""
        return self.received[0] if self.received and not self.raised else None

    @contextmanager
    def interruptible(self):
        if self.pending is not None:
            self.raised = True
            raise Interrupted(self.received[0])
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def names(self) -> str:
        return ", ".join(signal.Signals(s).name for s in self.received)


_guard = SignalGuard()  # the process has one set of signal handlers


def guard() -> SignalGuard:
    return _guard


def reset() -> SignalGuard:
    """A fresh guard (each run of the CLI in one process starts with none received)."""
    global _guard
    _guard = SignalGuard()
    return _guard


def interruptible():
    """Where a signal may stop the work in progress (a no-op when no guard is installed: nothing is received)."""
    return _guard.interruptible()
