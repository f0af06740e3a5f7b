"""Preflight of a run on a completions backend: the endpoint answers, the model is served, a tokenizer is found
offline, and the lm-eval model settings that follow (echo check included)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from evalchemy.backends import echo_check as echo
from evalchemy.backends import openai_completions as endpoint_mod
from evalchemy.backends.base import Backend
from evalchemy.backends.registry import backend_for
from evalchemy.errors import PreflightError, PreflightFindings, UsageError
from evalchemy.execution.options import RunOptions
from evalchemy.plan import DEFAULT_MAX_LENGTH, ModelSettings, Plan, format_model_args
from evalchemy.proxy import display as proxy_display

logger = logging.getLogger(__name__)


@dataclass
class Preflight:
    endpoint: endpoint_mod.Endpoint
    model: str
    tokenizer: endpoint_mod.TokenizerChoice
    model_settings: ModelSettings


def preflight(opts: RunOptions, plan: Plan, api_key: str | None, backend: Backend | None = None,
              findings: PreflightFindings | None = None) -> Preflight:
    """Check the endpoint, pick the model and find a tokenizer offline. Raises PreflightError naming every problem,
    those already in ``findings`` (the data's) first.

    ``backend``: the backend serving the endpoint (default: the registry's for ``opts.endpoint``), whose traits
    (one request at a time, string prompts, its own tokenizer and max length) shape the model settings."""
    backend = backend_for(opts.endpoint) if backend is None else backend
    findings = PreflightFindings() if findings is None else findings
    ep = replace(endpoint_mod.normalize(opts.endpoint), proxy=opts.proxy)
    logger.info("endpoint: %s%s", ep.display, f" (through the proxy {proxy_display(opts.proxy)})" if opts.proxy else "")
    models = findings.check(endpoint_mod.fetch_models, ep, api_key=api_key)
    model = None if models is None else findings.check(endpoint_mod.choose_model, models, opts.model, ep)
    if model is not None:
        logger.info("model: %s", model["id"])
    tokenizer = None
    if not opts.tokenizer and backend.default_tokenizer() is not None:
        tokenizer = backend.default_tokenizer()
    elif model is not None or opts.tokenizer:  # else which tokenizer fits depends on the model the server reports
        tokenizer = findings.check(endpoint_mod.resolve_tokenizer, opts.tokenizer, model, ep,
                                   plan.needs_loglikelihood, api_key)
    findings.raise_any()
    logger.info("tokenizer: %s (%s)", tokenizer.path or tokenizer.backend, tokenizer.source)
    server_max = model.get("max_model_len")
    max_length = opts.max_length or (server_max if isinstance(server_max, int) and server_max > 0 else None)
    if max_length is None:
        max_length = backend.default_max_length
    if max_length is None:
        max_length = DEFAULT_MAX_LENGTH
        logger.warning("the server does not report max_model_len; using max_length=%d (pass --max-length)",
                       max_length)
    settings = ModelSettings(
        base_url=ep.completions_url,
        model=model["id"],
        tokenizer=tokenizer.path,
        tokenizer_backend=tokenizer.backend,
        tokenized_requests=tokenizer.backend != "none" and not backend.string_prompts,
        num_concurrent=1 if backend.one_request_at_a_time else opts.concurrency,
        single_stream=backend.one_request_at_a_time,
        max_retries=opts.max_retries,
        timeout=opts.request_timeout,
        max_length=max_length,
        client=opts.client,
    )
    try:
        format_model_args(settings.model_args())
    except UsageError as err:  # e.g. a comma in the model folder the server reports
        raise PreflightError(str(err)) from None
    if plan.needs_loglikelihood:
        settings = echo.check(settings, api_key)
    return Preflight(endpoint=ep, model=model["id"], tokenizer=tokenizer, model_settings=settings)

