"""The vLLM OpenAI-compatible endpoint: model discovery, tokenizer resolution (offline); URLs in ``endpoint.py``."""

from __future__ import annotations

import logging
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from evalchemy import hfcache
from evalchemy.redaction import redact_url as _redact, strip_credentials  # noqa: F401 - re-exported
from evalchemy.backends.base import Backend
from evalchemy.backends.endpoint import Endpoint, normalize  # noqa: F401 - re-exported
from evalchemy.backends.http import call_json
from evalchemy.errors import PreflightError, setting

_TOKENIZER = setting("tokenizer")
_MODEL = setting("model")

logger = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT_S = 5.0
TOKENIZER_FILES = hfcache.TOKENIZER_FILES


def fetch_models(endpoint: Endpoint, api_key: str | None = None, timeout: float = PREFLIGHT_TIMEOUT_S) -> list[dict]:
    """``GET /v1/models``; raises PreflightError with the URL and the reason."""
    where = endpoint.display_models_url
    try:
        body = call_json(endpoint.models_url, api_key, timeout, endpoint.proxy)
    except urllib.error.HTTPError as err:
        hint = " (check OPENAI_API_KEY)" if err.code in (401, 403) else ""
        raise PreflightError(f"endpoint {where} answered HTTP {err.code} {err.reason}{hint}") from None
    except urllib.error.URLError as err:
        raise PreflightError(
            f"endpoint {where} is not reachable: {err.reason}; is the vLLM server running and is the URL right?"
        ) from None
    except TimeoutError:
        raise PreflightError(f"endpoint {where} did not answer within {timeout:g} s") from None
    except (ValueError, UnicodeDecodeError):
        raise PreflightError(f"endpoint {where} did not answer with JSON: is this a vLLM OpenAI-compatible server?") from None
    except OSError as err:
        raise PreflightError(f"endpoint {where} failed: {err}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise PreflightError(f"endpoint {where} answered without a model list ('data': [{{'id': ...}}])")
    return data


def choose_model(models: list[dict], requested: str | None, endpoint: Endpoint) -> dict:
    ids = [m["id"] for m in models]
    if requested:
        for model in models:
            if model["id"] == requested:
                return model
        served = ", ".join(ids) if ids else "nothing"
        raise PreflightError(f"model {requested!r} is not served by {endpoint.display}; it serves: {served}")
    if not models:
        raise PreflightError(f"endpoint {endpoint.display_models_url} serves no model")
    if len(models) > 1:
        raise PreflightError(
            f"endpoint {endpoint.display_models_url} serves {len(models)} models: {', '.join(ids)}; "
            f"pass {_MODEL} NAME to choose one"
        )
    return models[0]


@dataclass(frozen=True)
class TokenizerChoice:
    backend: str  # "huggingface", "remote" or "none"
    path: str | None
    source: str  # how it was found, for the run log


def _is_tokenizer_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in TOKENIZER_FILES)


def hf_cache_has(repo_id: str) -> bool:
    """True when the local Hugging Face hub cache holds the tokenizer of a hub repo id (usable with
    HF_HUB_OFFLINE=1)."""
    return hfcache.cached_tokenizer(repo_id) is not None


def has_tokenizer_endpoints(endpoint: Endpoint, api_key: str | None = None) -> bool:
    """vLLM serves /tokenizer_info only when started with --enable-tokenizer-info-endpoint."""
    try:
        info = call_json(f"{endpoint.server_base}/tokenizer_info", api_key, PREFLIGHT_TIMEOUT_S, endpoint.proxy)
    except (OSError, ValueError):
        return False
    return isinstance(info, dict)


def resolve_tokenizer(
    requested: str | None,
    model: dict | None,
    endpoint: Endpoint | None,
    needs_loglikelihood: bool,
    api_key: str | None = None,
) -> TokenizerChoice:
    """Find a tokenizer without any download: --tokenizer, the server's ``root`` path, the local HF cache, the
    server's tokenizer endpoints. Raises PreflightError when log-likelihood tasks have none."""
    if requested:
        path = Path(requested).expanduser()
        if _is_tokenizer_dir(path):
            return TokenizerChoice("huggingface", str(path.resolve()), "--tokenizer")
        if path.exists():
            raise PreflightError(
                f"{_TOKENIZER} {requested}: the folder has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); "
                "point it at the model folder vLLM was started with"
            )
        if hf_cache_has(requested):
            return TokenizerChoice("huggingface", requested, "--tokenizer (Hugging Face cache)")
        raise PreflightError(
            f"{_TOKENIZER} {requested}: not a folder on this disk and not in the local Hugging Face cache; "
            f"nothing is downloaded: copy the model's tokenizer files here and pass {_TOKENIZER} /path/to/folder"
        )
    candidates = []
    if model:
        candidates = [c for c in (model.get("root"), model.get("id")) if isinstance(c, str) and c]
    for candidate in candidates:
        if _is_tokenizer_dir(Path(candidate)):
            return TokenizerChoice("huggingface", candidate, "the model folder the server reports (root)")
    for candidate in candidates:
        if hf_cache_has(candidate):
            return TokenizerChoice("huggingface", candidate, "the local Hugging Face cache")
    if endpoint is not None and has_tokenizer_endpoints(endpoint, api_key):
        return TokenizerChoice("remote", None, "the server's /tokenizer_info and /tokenize endpoints")
    if needs_loglikelihood:
        reported = f" (the server reports root={candidates[0]!r}, which is not on this disk)" if candidates else ""
        raise PreflightError(
            "multiple-choice tasks need the model's tokenizer and none was found offline" + reported + ": "
            f"pass {_TOKENIZER} /path/to/model-folder (a folder with tokenizer.json), "
            "or start vLLM with --enable-tokenizer-info-endpoint"
        )
    return TokenizerChoice("none", None, "not needed: generation tasks only")


class VllmServerBackend(Backend):
    """A running vLLM (or any OpenAI-compatible completions) server at a URL."""

    name = "vllm-server"
    description = "vLLM OpenAI-compatible completions server at --endpoint URL"

    @classmethod
    def serves(cls, endpoint: str | None) -> bool:
        return True


class OpenAICompletionsBackend(VllmServerBackend):
    """The OpenAI API's completions route (or any service that wants its key): the endpoint defaults to OpenAI's,
    the key must be in the environment before anything is sent."""

    name = "openai-completions"
    description = "the OpenAI API's completions route (key from the environment)"
    requires_key = True
    default_endpoint = "https://api.openai.com/v1/completions"

    @classmethod
    def serves(cls, endpoint: str | None) -> bool:
        return False
