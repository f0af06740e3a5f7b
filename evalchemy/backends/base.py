"""The one protocol every way of reaching a model follows: what it can take (traits), its defaults, and start/stop.

The runner and the CLI ask ``backends.registry.backend_for(endpoint)`` for a backend and read its traits; they
never test which backend it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from evalchemy.backends.endpoint import Endpoint, normalize


class Backend:
    """A way of reaching a model through lm-eval's completions client. One instance serves one run."""

    name: ClassVar[str]  # the registry's key, e.g. "vllm-server"
    description: ClassVar[str]
    one_request_at_a_time: ClassVar[bool] = False  # one request in flight, one prompt per request; no task overrides
    one_prompt_per_request: ClassVar[bool] = False  # requests in flight as configured, one prompt each
    loglikelihood: ClassVar[bool] = True  # scores log-likelihood (multiple-choice) tasks: prompt log-probabilities
    chat: ClassVar[bool] = False  # sends chat messages; the server applies the model's chat template
    requires_key: ClassVar[bool] = False  # an API service: the key must be in the environment
    default_endpoint: ClassVar[str | None] = None  # where it sends requests when no endpoint is given
    preflight_kind: ClassVar[str] = "completions"  # which preflight checks it (execution/preflight.py)
    string_prompts: ClassVar[bool] = False  # takes text prompts only, never lists of token ids
    runs_here: ClassVar[bool] = False  # started on this machine by the run (no proxy applies)
    endpoint_name: ClassVar[str | None] = None  # the endpoint value that stands for it (``local``), if it runs here
    default_max_length: ClassVar[int | None] = None  # when the server reports no max_model_len
    model_id: ClassVar[str | None] = None  # the model it serves, when it is known before it starts
    lm_eval_model: ClassVar[str | None] = None  # lm-eval model name it needs, when not picked by the echo check
    placeholder_url: ClassVar[str | None] = None  # what a dry run shows for its URL, chosen at run time
    placeholder_note: ClassVar[str | None] = None  # and why

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint

    @classmethod
    def serves(cls, endpoint: str | None) -> bool:
        """Whether an endpoint value alone picks this backend (``local``; any URL: vllm-server); the others are
        chosen by name."""
        return False

    def normalize(self, url: str) -> Endpoint:
        """The checked URLs of an endpoint of this backend; UsageError when malformed."""
        return normalize(url)

    def worker_python(self) -> str | None:
        """The Python the lm-eval worker runs in; None: the runner's own."""
        return None

    def worker_env(self) -> dict[str, str]:
        """Variables the lm-eval worker gets on top of the run's (the engine's own settings)."""
        return {}

    def planned_settings(self, model: str | None, gpu: str | None, max_length: int | None):
        """The model settings a dry run shows when they do not come from a server (plan.ModelSettings); None:
        the completions settings."""
        return None

    def planned_tokenizer(self) -> str | None:
        """The tokenizer it brings, as a path shown without writing anything (dry run); None: none of its own."""
        return None

    def default_tokenizer(self):
        """The TokenizerChoice it brings (prepared on disk) when none is given; None: resolve it from the server."""
        return None

    def start(self, run_dir: Path) -> str:
        """Make the model reachable; returns the completions URL. Raises PreflightError when it cannot."""
        return self.endpoint or ""

    def stop(self) -> None:
        """Stop what ``start`` started; safe to call twice."""

    def endpoint_id(self, public_url: str) -> str:
        """What the summary and the request cache call the endpoint (stable from one run to the next)."""
        return public_url
