"""What each benchmark job asked of the endpoint, counted in the lm-eval worker and readable after its death.

The worker counts HTTP attempts, failed attempts, empty answers and truncated prompts (``RequestStats``). Every change
is written at once to a small counters file (``Counters``: little-endian 64-bit numbers, ``COUNTS``, at offset 0) that the
runner created, handed to the worker as an inherited file descriptor (``EVALCHEMY_COUNTERS_FD``) and zeroes before
each job. A job stopped by its task timeout, or a worker killed by a signal, so still reports the requests that
reached the server: the runner reads the file after the worker is gone.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import struct
import tempfile
import time

COUNTERS_FD_ENV = "EVALCHEMY_COUNTERS_FD"
# the first four are the summary's; "answers" (generations parsed) and "null_answers" (no text at all) decide
# whether empty answers fail the job (see execution.pool.empty_answer_error)
COUNTS = ("sent", "failed_attempts", "empty_answers", "truncated_prompts", "answers", "null_answers")
_LAYOUT = struct.Struct(f"<{len(COUNTS)}Q")
PROGRESS_EVERY_S = 60.0  # a progress line in the benchmark log at most this often (progress bars are off)

logger = logging.getLogger("evalchemy.engines.lm_eval.worker")


def no_progress_bars() -> None:
    """Turn every tqdm progress bar off (lm-eval's, datasets'): under cron they reach the benchmark log as one
    endless line of carriage-return redraws. ``RequestStats`` logs a progress line now and then instead."""
    import tqdm.std

    init = tqdm.std.tqdm.__init__
    if getattr(init, "_evalchemy_quiet", False):
        return
    position = list(inspect.signature(init).parameters).index("disable") - 1  # among the arguments after self

    @functools.wraps(init)
    def quiet(self, *args, **kwargs):
        if len(args) > position:
            args = (*args[:position], True, *args[position + 1:])
        else:
            kwargs["disable"] = True
        init(self, *args, **kwargs)

    quiet._evalchemy_quiet = True
    tqdm.std.tqdm.__init__ = quiet


class Counters:
    """The counters file: created by the runner (unnamed, gone with its last descriptor), written by the worker."""

    def __init__(self, fd: int | None = None) -> None:
        self._file = None  # the runner's side owns the file; the worker's only writes to the descriptor
        if fd is None:
            self._file = tempfile.TemporaryFile(prefix="evalchemy-requests-")  # noqa: SIM115 - lives with self
            fd = self._file.fileno()
        self.fd = fd
        if self._file is not None:
            self.reset()

    def reset(self) -> None:
        self.write({})

    def write(self, counts: dict) -> None:
        os.pwrite(self.fd, _LAYOUT.pack(*(counts.get(key, 0) for key in COUNTS)), 0)

    def read(self) -> dict:
        data = os.pread(self.fd, _LAYOUT.size, 0)
        if len(data) < _LAYOUT.size:
            return dict.fromkeys(COUNTS, 0)
        return dict(zip(COUNTS, _LAYOUT.unpack(data), strict=True))


class _Attempt:
    """One call of lm-eval's async request method (one HTTP attempt, retries are new calls)."""

    sent = False


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar("evalchemy_attempt", default=None)


class RequestStats(logging.Handler):
    """What one job asked of the endpoint: HTTP attempts, failed attempts (lm-eval retries them; a request whose
    every attempt fails fails the job), answers that came back empty (null or only whitespace), and prompts lm-eval
    truncated to max_length. Attempts and answers are counted by wrapping lm-eval's request and parsing methods;
    truncations from lm-eval's own warnings."""

    def __init__(self, counters: Counters | None = None) -> None:
        super().__init__(logging.WARNING)
        self.counters = counters
        self.reset()

    @classmethod
    def from_env(cls) -> "RequestStats":
        fd = os.environ.get(COUNTERS_FD_ENV)
        return cls(Counters(int(fd)) if fd and fd.isdigit() else None)

    def reset(self) -> None:
        self.sent = self.failed = self.empty = self.truncated = self.answers = self.null = 0
        self._progress_at = time.monotonic()
        self._changed()

    def _changed(self) -> None:
        if self.counters is not None:
            self.counters.write(self.as_dict())

    def emit(self, record: logging.LogRecord) -> None:
        if "truncat" in record.getMessage().lower():
            self.truncated += 1
            self._changed()

    def as_dict(self) -> dict:
        return {"sent": self.sent, "failed_attempts": self.failed, "empty_answers": self.empty,
                "truncated_prompts": self.truncated, "answers": self.answers, "null_answers": self.null}

    def _on_send(self) -> None:
        self.sent += 1
        self._changed()
        if time.monotonic() - self._progress_at >= PROGRESS_EVERY_S:
            self._progress_at = time.monotonic()
            logger.info("progress: %d request(s) sent, %d failed attempt(s), %d empty answer(s)", self.sent,
                        self.failed, self.empty)

    def _on_failure(self) -> None:
        self.failed += 1
        self._changed()

    def counting(self, method):
        """lm-eval's request method, counting its attempts. Async attempts count as sent once their request headers
        went out (see ``_headers_sent``): lm-eval creates every request's coroutine at once, they wait for a slot,
        and once one request fails for good lm-eval cancels the others and closes the session under them; those
        never reach the server and are neither sent nor failed attempts."""
        stats = self
        if inspect.iscoroutinefunction(method):
            @functools.wraps(method)
            async def wrapper(*args, **kwargs):
                attempt = _Attempt()
                token = _ATTEMPT.set(attempt)
                try:
                    return await method(*args, **kwargs)
                except BaseException as err:
                    session = kwargs.get("session")
                    never_started = isinstance(err, asyncio.CancelledError) or bool(getattr(session, "closed", 0))
                    if attempt.sent or not never_started:
                        stats._on_failure()
                    raise
                finally:
                    _ATTEMPT.reset(token)
        else:
            @functools.wraps(method)
            def wrapper(*args, **kwargs):
                stats._on_send()
                try:
                    return method(*args, **kwargs)
                except BaseException:
                    stats._on_failure()
                    raise
        return wrapper

    async def _headers_sent(self, session, context, params) -> None:
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.sent = True
        self._on_send()

    def _tracing_sessions(self) -> None:
        """Every aiohttp session opened in this process reports each request whose headers went out."""
        import aiohttp

        config = aiohttp.TraceConfig()
        config.on_request_headers_sent.append(self._headers_sent)
        init = aiohttp.ClientSession.__init__

        @functools.wraps(init)
        def traced(session, *args, **kwargs):
            kwargs["trace_configs"] = [*(kwargs.get("trace_configs") or []), config]
            init(session, *args, **kwargs)

        aiohttp.ClientSession.__init__ = traced

    def counting_answers(self, parse):
        """``parse_generations`` that also counts the empty answers it returns."""
        stats = self

        @functools.wraps(parse)
        def wrapper(*args, **kwargs):
            answers = parse(*args, **kwargs)
            stats.answers += len(answers)
            stats.null += sum(1 for a in answers if a is None)
            stats.empty += sum(1 for a in answers if a is None or (isinstance(a, str) and not a.strip()))
            stats._changed()
            return answers
        return wrapper

    def install(self) -> None:
        from lm_eval.models.api_models import TemplateAPI
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        for name in ("model_call", "amodel_call"):
            setattr(TemplateAPI, name, self.counting(getattr(TemplateAPI, name)))
        self._tracing_sessions()
        LocalCompletionsAPI.parse_generations = staticmethod(self.counting_answers(
            LocalCompletionsAPI.parse_generations))
