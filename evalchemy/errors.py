"""The project's exceptions. Each carries the process exit code the CLI maps it to.

Messages speak of settings, not of command-line flags: ``setting("endpoint")`` marks a setting's name inside a
message. ``str(err)`` shows it bare (``endpoint``); the CLI, the one place that knows the flags, shows it as
``--endpoint`` (``cli_words``).
"""

from __future__ import annotations

import re

_MARK = "\u2063"  # invisible separator: never typed by a user, never left in a rendered message
_SETTING = re.compile(f"{_MARK}([a-z0-9-]+){_MARK}")


def setting(name: str) -> str:
    """A setting's name, to be put in an error message (``name`` as the CLI spells its flag, without dashes)."""
    return f"{_MARK}{name}{_MARK}"


def plain_words(text: str) -> str:
    """The message with each marked setting shown by its bare name."""
    return _SETTING.sub(lambda m: m.group(1), text)


def cli_words(text: str) -> str:
    """The message with each marked setting shown as its command-line flag."""
    return _SETTING.sub(lambda m: "--" + m.group(1), text)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PREFLIGHT = 3
EXIT_BENCHMARKS_FAILED = 4
EXIT_LOCKED = 5
EXIT_REGRESSION = 6  # compare --fail-on-regression: a score dropped beyond noise and the threshold
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class EvalchemyError(Exception):
    """Base class: a problem the user can act on. ``str(err)`` is the whole message; ``message`` keeps the settings
    marked, for a caller that re-words them."""

    exit_code = EXIT_INTERNAL

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return plain_words(self.message)


class UsageError(EvalchemyError):
    """A command-line flag has a bad value or flags conflict."""

    exit_code = EXIT_USAGE


class ConfigError(EvalchemyError):
    """The config file cannot be read or does not validate. ``problems`` lists every problem, one line each."""

    exit_code = EXIT_USAGE

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{path}: {count} problem{'s' if count != 1 else ''} found"
        super().__init__("\n".join([head, *("  " + p for p in self.problems)]))


class PreflightError(EvalchemyError):
    """The endpoint, model, tokenizer or data is not usable; nothing was run."""

    exit_code = EXIT_PREFLIGHT


class PreflightFindings:
    """Preflight's problems (data, endpoint, model, tokenizer), collected so that one run reports them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def check(self, step, *args, **kwargs):
        """``step(*args, **kwargs)``; None when it raises PreflightError, whose message is kept."""
        try:
            return step(*args, **kwargs)
        except PreflightError as err:
            self.problems.append(err.message)
            return None

    def raise_any(self) -> None:
        """One PreflightError naming every problem, each starting a line; none when there was none."""
        if len(self.problems) > 1:
            raise PreflightError(f"{len(self.problems)} problems found:\n" + "\n".join(self.problems))
        if self.problems:
            raise PreflightError(self.problems[0])


class LockHeldError(EvalchemyError):
    """Another run holds the lock on the output folder."""

    exit_code = EXIT_LOCKED


class StoreError(EvalchemyError):
    """The results store cannot be opened or read, or lacks what was asked (a run id, a model)."""

    exit_code = EXIT_USAGE


class NotInStore(StoreError):
    """The store has no such run (``what`` "run") or no run of such a model (``what`` "model")."""

    def __init__(self, message: str, what: str) -> None:
        super().__init__(message)
        self.what = what


class Interrupted(EvalchemyError):
    """The run was stopped by a signal."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def run_exit_code(*, internal: bool, interrupted: Interrupted | None, preflight_failed: bool, succeeded: bool) -> int:
    """A run's exit code from its outcome: with the exceptions' ``exit_code`` above, the one map of outcomes to exit
    codes. The runner asks for it (rather than the CLI) because the summary records the code before the process
    exits; the CLI exits with the summary's code."""
    if internal:
        return EXIT_INTERNAL
    if interrupted is not None:
        return interrupted.exit_code
    if preflight_failed:
        return EXIT_PREFLIGHT
    return EXIT_OK if succeeded else EXIT_BENCHMARKS_FAILED
