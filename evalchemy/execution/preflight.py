"""Preflight of a run on a completions backend: the endpoint answers, the model is served, a tokenizer is found
offline, and the lm-eval model settings that follow (echo check included)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from evalchemy.backends import chat as chat_mod
from evalchemy.backends import checkpoint as checkpoint_mod
from evalchemy.backends import echo_check as echo
from evalchemy.backends import probe as completions_probe
from evalchemy.backends import openai_completions as endpoint_mod
from evalchemy.backends.base import Backend
from evalchemy.backends.registry import backend_for
from evalchemy.errors import PreflightError, PreflightFindings, UsageError, setting
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
    capabilities: dict | None = None  # what the backend's checks found (the summary's backend.capabilities)


def preflight(opts: RunOptions, plan: Plan, api_key: str | None, backend: Backend | None = None,
              findings: PreflightFindings | None = None) -> Preflight:
    """Check the endpoint, pick the model and find what the backend needs. Raises PreflightError naming every
    problem, those already in ``findings`` (the data's) first.

    ``backend``: the backend serving the endpoint (default: the registry's for ``opts.endpoint``), whose traits
    (one request at a time, string prompts, its own tokenizer and max length) shape the model settings."""
    backend = backend_for(opts.endpoint, opts.backend) if backend is None else backend
    findings = PreflightFindings() if findings is None else findings
    return PREFLIGHTS[backend.preflight_kind](opts, plan, api_key, backend, findings)


def task_problems(plan: Plan, backend: Backend) -> list[str]:
    """The enabled tasks ``backend`` cannot run (log-likelihood tasks on a backend without prompt log-probabilities),
    one line each, then what would work; empty when every task can run."""
    if backend.loglikelihood:
        return []
    refused = [f"{bench.name}: {run.entry}" + ("" if run.dataset is not None or run.tasks == (run.entry,)
                                               else f" ({', '.join(run.tasks)})")
               for bench in plan.to_run for run in bench.runs if run.needs_loglikelihood]
    if not refused:
        return []
    return [f"the {backend.name} backend cannot run log-likelihood (multiple-choice) tasks: its answers carry no "
            "log-probabilities of the prompt, which these tasks score. Refused, nothing was sent:",
            *(f"  {line}" for line in refused),
            f"what works: a completions server with log-probabilities ({setting('backend')} vllm-server "
            f"{setting('endpoint')} http://HOST:8000/v1/completions); for a dataset entry, its generative variant "
            '("mode": "generative" in its dataset block); for lm-eval\'s KMMLU, the generative kmmlu_direct_* tasks']


def check_tasks(plan: Plan, backend: Backend) -> None:
    """PreflightError when ``backend`` cannot run some enabled task (``task_problems``)."""
    problems = task_problems(plan, backend)
    if problems:
        raise PreflightError("\n".join(problems))


def _served_model(opts: RunOptions, backend: Backend, api_key: str | None, findings: PreflightFindings):
    """The endpoint (through the proxy, if any) and the model it serves that the run uses (None when not found)."""
    ep = replace(backend.normalize(opts.endpoint), proxy=opts.proxy)
    logger.info("endpoint: %s%s", ep.display, f" (through the proxy {proxy_display(opts.proxy)})" if opts.proxy else "")
    models = findings.check(endpoint_mod.fetch_models, ep, api_key=api_key)
    model = None if models is None else findings.check(endpoint_mod.choose_model, models, opts.model, ep)
    if model is not None:
        logger.info("model: %s", model["id"])
    return ep, model


def _max_length(opts: RunOptions, model: dict, backend: Backend) -> int:
    server_max = model.get("max_model_len")
    max_length = opts.max_length or (server_max if isinstance(server_max, int) and server_max > 0 else None)
    if max_length is None:
        max_length = backend.default_max_length
    if max_length is None:
        max_length = DEFAULT_MAX_LENGTH
        logger.warning("the server does not report max_model_len; using max_length=%d (pass --max-length)",
                       max_length)
    return max_length


def chat_preflight(opts: RunOptions, plan: Plan, api_key: str | None, backend: Backend,
                   findings: PreflightFindings) -> Preflight:
    """A chat server: the model is served and one tiny chat request works (route, chat template, answer shape).
    No tokenizer: the server applies the chat template and counts the tokens."""
    ep, model = _served_model(opts, backend, api_key, findings)
    findings.raise_any()
    found = chat_mod.probe(ep.completions_url, ep.display, model["id"], api_key, ep.proxy)
    logger.info("chat check: %s", ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in found.as_dict().items()))
    settings = ModelSettings(base_url=ep.completions_url, model=model["id"], tokenizer=None, tokenizer_backend="none",
                             tokenized_requests=False, num_concurrent=opts.concurrency, max_retries=opts.max_retries,
                             timeout=opts.request_timeout, max_length=_max_length(opts, model, backend),
                             lm_eval_model=backend.lm_eval_model, client="lm-eval", chat=True)
    tokenizer = endpoint_mod.TokenizerChoice("none", None, "not needed: the server applies the chat template")
    return Preflight(endpoint=ep, model=model["id"], tokenizer=tokenizer, model_settings=settings,
                     capabilities=found.as_dict())


def completions_preflight(opts: RunOptions, plan: Plan, api_key: str | None, backend: Backend,
                          findings: PreflightFindings) -> Preflight:
    """A completions server: the model, a tokenizer found offline, and the echo check for log-likelihood tasks."""
    ep, model = _served_model(opts, backend, api_key, findings)
    tokenizer = None
    if not opts.tokenizer and backend.default_tokenizer() is not None:
        tokenizer = backend.default_tokenizer()
    elif model is not None or opts.tokenizer:  # else which tokenizer fits depends on the model the server reports
        tokenizer = findings.check(endpoint_mod.resolve_tokenizer, opts.tokenizer, model, ep,
                                   plan.needs_loglikelihood, api_key)
    findings.raise_any()
    logger.info("tokenizer: %s (%s)", tokenizer.path or tokenizer.backend, tokenizer.source)
    max_length = _max_length(opts, model, backend)
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
    found = {}
    if not backend.one_request_at_a_time:  # the embedded model's settings are fixed
        encode = echo.encoder(settings.tokenizer) if settings.tokenizer_backend == "huggingface" else None
        settings, probed = completions_probe.probe(settings, encode, api_key, ep)
        found = probed.as_dict()
    if plan.needs_loglikelihood:
        settings = echo.check(settings, api_key)
    server_max = model.get("max_model_len")
    capabilities = {  # what was seen; None: not checked (no log-likelihood task in the plan)
        "completions_route": True, **found,
        "prompt_logprobs": True if plan.needs_loglikelihood else None,
        "echo_omits_end_of_text": settings.lm_eval_model == echo.ECHO_MODEL if plan.needs_loglikelihood else None,
        "max_model_len": server_max if isinstance(server_max, int) else None,
    }
    return Preflight(endpoint=ep, model=model["id"], tokenizer=tokenizer, model_settings=settings,
                     capabilities=capabilities)


def checkpoint_preflight(opts: RunOptions, plan: Plan, api_key: str | None, backend: Backend,
                         findings: PreflightFindings) -> Preflight:
    """A checkpoint loaded in the worker: the folder has what lm-eval loads, the worker's Python has the engine."""
    folder = findings.check(checkpoint_mod.check_folder, opts.model, backend.name)
    python = backend.worker_python()
    engine = findings.check(checkpoint_mod.check_engine, python, backend.engine_modules, backend.name)
    findings.raise_any()
    logger.info("checkpoint: %s; engine: %s in %s, %d CUDA device(s)", folder,
                ", ".join(f"{k} {v}" for k, v in engine["versions"].items()), python, engine["cuda_devices"])
    settings = backend.settings(folder, engine["cuda_devices"], opts.max_length)
    endpoint = endpoint_mod.Endpoint(completions_url=str(folder), models_url="", server_base="", display=str(folder))
    tokenizer = endpoint_mod.TokenizerChoice("huggingface", str(folder), "the checkpoint folder")
    capabilities = {"engine_python": python, "cuda_devices": engine["cuda_devices"], **{
        f"{name}_version": version for name, version in engine["versions"].items()}}
    return Preflight(endpoint=endpoint, model=folder.name, tokenizer=tokenizer, model_settings=settings,
                     capabilities=capabilities)


PREFLIGHTS = {"completions": completions_preflight, "chat": chat_preflight, "checkpoint": checkpoint_preflight}
