"""The backends a run can use, one registration line each; ``backend_for`` picks one from ``--endpoint``."""

from __future__ import annotations

from evalchemy.backends.base import Backend
from evalchemy.backends.llamacpp import LlamaCppBackend
from evalchemy.backends.openai_completions import VllmServerBackend

BACKENDS: dict[str, type[Backend]] = {}


def register(backend: type[Backend]) -> type[Backend]:
    BACKENDS[backend.name] = backend
    return backend


register(LlamaCppBackend)
register(VllmServerBackend)  # last: it takes any URL


def backend_for(endpoint: str | None) -> Backend:
    """The backend that serves ``endpoint`` ('local': the embedded model; a URL, or none yet: a vLLM server)."""
    for backend in BACKENDS.values():
        if backend.serves(endpoint):
            return backend(endpoint)
    raise LookupError(f"no backend serves {endpoint!r}")
