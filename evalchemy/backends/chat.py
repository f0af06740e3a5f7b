"""Chat completions servers (``--backend chat``): LM Studio, Ollama, vLLM's chat route, the OpenAI API.

Requests go to ``…/v1/chat/completions`` as chat messages; the server applies the model's chat template (lm-eval's
``local-chat-completions`` with ``apply_chat_template``). A chat answer carries no log-probabilities of the prompt,
so log-likelihood (multiple-choice) tasks cannot be scored here: they are refused before anything runs, and the
generative variant of a dataset entry (``"mode": "generative"``) or a generation task scores the same questions.

The probe (``probe``) sends one tiny chat request before the first benchmark: does the route exist, does the model
have a chat template, does the answer have the chat shape.
"""

from __future__ import annotations

import json
import urllib.error
from dataclasses import dataclass

from evalchemy.backends.base import Backend
from evalchemy.backends.endpoint import Endpoint, normalize
from evalchemy.backends.http import call_json
from evalchemy.errors import PreflightError, setting

LM_EVAL_MODEL = "local-chat-completions"
PROBE_TIMEOUT_S = 30.0  # one token from a model that may be loading
PROBE_MESSAGE = "Answer with one word: ready?"


@dataclass(frozen=True)
class ChatProbe:
    """What one tiny chat request showed."""

    chat_route: bool
    chat_template: bool
    answer_shape: bool

    def as_dict(self) -> dict:
        return {"chat_route": self.chat_route, "chat_template": self.chat_template, "answer_shape": self.answer_shape}


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read().decode("utf-8", "replace"))
    except (ValueError, OSError):
        return ""
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        return str(inner.get("message") or inner.get("detail") or "")
    return ""


def probe(chat_url: str, display: str, model: str, api_key: str | None, proxy: str | None,
          timeout: float = PROBE_TIMEOUT_S) -> ChatProbe:
    """One chat request of one token. Raises PreflightError naming the check that failed and what to do."""
    body = {"model": model, "messages": [{"role": "user", "content": PROBE_MESSAGE}], "max_tokens": 1,
            "temperature": 0}
    try:
        answer = call_json(chat_url, api_key, timeout, proxy, body)
    except urllib.error.HTTPError as err:
        text = _error_text(err)
        if err.code in (404, 405):
            raise PreflightError(
                f"chat check: {display} answered HTTP {err.code}: the server has no chat completions route; for a "
                f"completions server use {setting('backend')} vllm-server") from None
        if err.code == 400 and "template" in text.lower():
            raise PreflightError(
                f"chat check: {display} answered HTTP 400 ({text[:200]}): the model has no chat template; start the "
                "server with one (vLLM: --chat-template FILE) or use a completions backend") from None
        hint = " (check the API key's environment variable)" if err.code in (401, 403) else ""
        raise PreflightError(f"chat check: {display} answered HTTP {err.code}{hint}"
                             + (f": {text[:200]}" if text else "")) from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise PreflightError(f"chat check: {display} failed: {reason}") from None
    except (ValueError, UnicodeDecodeError):
        raise PreflightError(f"chat check: {display} did not answer with JSON") from None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
        else None
    if not isinstance(message, dict) or "content" not in message:
        raise PreflightError(f"chat check: {display} answered without choices[0].message.content: not an "
                             "OpenAI-compatible chat completions server")
    return ChatProbe(chat_route=True, chat_template=True, answer_shape=True)


class ChatBackend(Backend):
    """Any OpenAI-compatible chat completions server; generation tasks only."""

    name = "chat"
    description = "an OpenAI-compatible chat completions server"
    one_prompt_per_request = True  # a chat request holds one conversation
    string_prompts = True
    loglikelihood = False
    chat = True
    lm_eval_model = LM_EVAL_MODEL
    preflight_kind = "chat"

    def normalize(self, url: str) -> Endpoint:
        return normalize(url, route="chat")
