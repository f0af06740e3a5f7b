"""The backends a run can use, one registration line each. ``backend_for`` picks one by name (``--backend``, the
config's ``model.backend``), else from the endpoint (``local``: the embedded model; a URL: a vLLM server)."""

from __future__ import annotations

from evalchemy.backends.base import Backend
from evalchemy.backends.chat import ChatBackend
from evalchemy.backends.checkpoint import HfBackend, VllmInProcessBackend
from evalchemy.backends.llamacpp import LlamaCppBackend
from evalchemy.backends.openai_completions import OpenAICompletionsBackend, VllmServerBackend

BACKENDS: dict[str, type[Backend]] = {}


def register(backend: type[Backend]) -> type[Backend]:
    BACKENDS[backend.name] = backend
    return backend


register(VllmServerBackend)
register(LlamaCppBackend)
register(OpenAICompletionsBackend)
register(ChatBackend)
register(HfBackend)
register(VllmInProcessBackend)


def backend_for(endpoint: str | None, name: str | None = None) -> Backend:
    """The backend named ``name``, or the one that serves ``endpoint``. LookupError for an unknown name."""
    if name is not None:
        if name not in BACKENDS:
            raise LookupError(name)
        return BACKENDS[name](endpoint)
    for backend in sorted(BACKENDS.values(), key=lambda b: b is VllmServerBackend):  # the catch-all last
        if backend.serves(endpoint):
            return backend(endpoint)
    raise LookupError(f"no backend serves {endpoint!r}")
