"""What a completions server accepts, found before the first benchmark: prompts as token ids, several prompts in one
request. Servers that are not vLLM differ here (some take text only, some one prompt per request); the run's
settings follow from what was found, so a benchmark does not fail on it half-way.

A server that answers ``GET /version`` as vLLM does is vLLM, whose API takes both: nothing more is sent. Any other
server gets two tiny completions requests (one token each): a prompt of token ids, then two prompts in one request.

The echo of log-probabilities, which multiple-choice tasks need, is checked by ``echo_check``.
"""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass, replace

from evalchemy.backends.http import call_json
from evalchemy.errors import PreflightError

logger = logging.getLogger(__name__)

PROBE_TEXTS = ("The capital of France is", "One, two, three,")


@dataclass(frozen=True)
class CompletionsProbe:
    server: str  # "vLLM 0.x.y" (from GET /version), or "not vLLM"
    token_id_prompts: bool | None  # None: not tried (text prompts chosen anyway)
    several_prompts: bool

    def as_dict(self) -> dict:
        return {"server": self.server, "token_id_prompts": self.token_id_prompts,
                "prompts_per_request": "several" if self.several_prompts else "one"}


def vllm_version(server_base: str, api_key: str | None, timeout: float, proxy: str | None) -> str | None:
    """vLLM's version from ``GET /version``; None when the server does not answer it as vLLM does."""
    try:
        body = call_json(f"{server_base}/version", api_key, timeout, proxy)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    version = body.get("version") if isinstance(body, dict) and len(body) == 1 else None
    return version if isinstance(version, str) and version[:1].isdigit() else None


def _post(url: str, body: dict, api_key: str | None, timeout: float, proxy: str | None) -> tuple[int, object]:
    """(HTTP status, the JSON answer or None); connection failures raise OSError."""
    try:
        return 200, call_json(url, api_key, timeout, proxy, body)
    except urllib.error.HTTPError as err:
        return err.code, None
    except (ValueError, UnicodeDecodeError):
        return 200, None


def _accepted(status: int, answer: object, prompts: int, what: str, display: str) -> bool:
    """True: a well-formed answer with one choice per prompt; False: refused as a bad request (400/422) or answered
    for fewer prompts; PreflightError for anything else."""
    if status in (400, 422):
        return False
    if status != 200:
        raise PreflightError(f"completions check ({what}): {display} answered HTTP {status}")
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        raise PreflightError(f"completions check ({what}): {display} answered without choices: not an "
                             "OpenAI-compatible completions server")
    return len(choices) == prompts


def probe(settings, encode, api_key: str | None, endpoint):
    """The settings (plan.ModelSettings) adjusted to what the server at ``endpoint`` accepts, and what was found.

    ``encode``: text -> token ids with the run's tokenizer, or None when prompts are sent as text anyway."""
    proxy, display = endpoint.proxy, endpoint.display
    version = vllm_version(endpoint.server_base, api_key, settings.timeout, proxy)
    if version is not None:
        return settings, CompletionsProbe(f"vLLM {version}", token_id_prompts=True, several_prompts=True)
    base = {"model": settings.model, "max_tokens": 1, "temperature": 0}
    send = lambda prompt: _post(settings.base_url, {**base, "prompt": prompt}, api_key,  # noqa: E731
                                settings.timeout, proxy)
    token_ids = None
    try:
        encoded = [encode(text) for text in PROBE_TEXTS] if encode is not None else None
    except Exception as err:  # noqa: BLE001 - lm-eval loads the same tokenizer, and the benchmark reports why
        logger.warning("completions check: the tokenizer did not load (%s: %s)", type(err).__name__, err)
        encoded = None
    if settings.tokenized_requests and encoded is not None:
        token_ids = _accepted(*send(encoded[0]), 1, "a prompt of token ids", display)
        if not token_ids:
            logger.warning("completions check: %s refuses prompts as token ids; sending text prompts", display)
            settings = replace(settings, tokenized_requests=False)
    prompts = encoded if settings.tokenized_requests and encoded is not None else list(PROBE_TEXTS)
    several = _accepted(*send(prompts), len(prompts), "two prompts in one request", display)
    if not several:
        logger.warning("completions check: %s takes one prompt per request; every task sends one", display)
        settings = replace(settings, max_batch=1)
    if token_ids is not False and several:
        logger.info("completions check: %s takes %s prompts, several per request", display,
                    "token-id" if settings.tokenized_requests else "text")
    return settings, CompletionsProbe("not vLLM", token_id_prompts=token_ids, several_prompts=several)
