"""Why a benchmark job failed, in words an operator can act on, from what lm-eval raised in the worker.

lm-eval's own errors name Python internals (``TypeError: 'NoneType' object is not subscriptable`` for an answer
without log-probabilities, a bare ``TimeoutError`` for a request that hit the per-request limit, sqlite's
``attempt to write a readonly database`` when the run folder went away); ``describe`` names the problem and the fix.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path

NO_LOGPROBS = ("this server returned no log-probabilities for an echo request (\"logprobs\": null); multiple-choice "
               "tasks need them: serve the model with an engine that returns prompt log-probabilities (vLLM does), "
               "or leave the multiple-choice tasks out")


class MissingLogprobs(BaseException):  # noqa: N818 - not an Exception on purpose: lm-eval's retries skip it
    """An echo answer without log-probabilities. Asking again cannot help, so it is a ``BaseException``: tenacity,
    which lm-eval retries requests with, retries only ``Exception``."""

    def __init__(self) -> None:
        super().__init__(NO_LOGPROBS)


def _has_logprobs(outputs) -> bool:
    for out in outputs if isinstance(outputs, list) else [outputs]:
        for choice in (out or {}).get("choices") or []:
            logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
            if not isinstance(logprobs, dict) or not isinstance(logprobs.get("token_logprobs"), list) \
                    or not isinstance(logprobs.get("top_logprobs"), list):
                return False
    return True


def checking_logprobs(parse):
    """``parse_logprobs`` that refuses answers without log-probabilities, with ``NO_LOGPROBS``."""

    @functools.wraps(parse)
    def wrapper(*args, **kwargs):
        if not _has_logprobs(kwargs.get("outputs", args[0] if args else None)):
            raise MissingLogprobs()
        return parse(*args, **kwargs)
    return wrapper


def install() -> None:
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    LocalCompletionsAPI.parse_logprobs = staticmethod(checking_logprobs(LocalCompletionsAPI.parse_logprobs))


def _is_timeout(err: BaseException) -> bool:
    if isinstance(err, (TimeoutError, asyncio.TimeoutError)):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - lm-eval depends on it
        return False
    return isinstance(err, requests.exceptions.Timeout)


def _folder_problem(run_dir: Path) -> bool:
    return not run_dir.is_dir() or not os.access(run_dir, os.W_OK | os.X_OK)


def describe(err: BaseException, job) -> str:
    """The error text of a failed job: what went wrong and what to do, else lm-eval's last line."""
    text = str(err).strip()
    original = f"{type(err).__name__}: {text.splitlines()[-1]}" if text else type(err).__name__
    run_dir = Path(job.log_path).parent  # job: a protocol.Job
    if isinstance(err, MissingLogprobs):
        return NO_LOGPROBS
    if isinstance(err, KeyboardInterrupt):
        return original
    if _folder_problem(run_dir):  # whatever lm-eval tripped over (its request cache, its results files) first
        return (f"the run folder {run_dir} was removed or made unwritable during the run ({original}); "
                "leave it in place, writable, until the run ends")
    if _is_timeout(err):
        args = job.kwargs.get("model_args") or {}
        return (f"a request got no answer within the per-request timeout ({args.get('timeout', '?')} s, "
                f"--request-timeout) in any of its {args.get('max_retries', '?')} attempt(s); raise "
                "--request-timeout, or lower --concurrency or --batch-size if the server is overloaded")
    return original
