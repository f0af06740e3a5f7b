"""The run command's choice of backend and endpoint: the flags and the config's model section checked against each
other and against the plan, and ``--dry-run --probe``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from evalchemy.cli.render import print_dry_run
from evalchemy.errors import ConfigError, UsageError, cli_words

logger = logging.getLogger("evalchemy")


def check_url_syntax(urls) -> None:
    """A malformed --endpoint URL is a usage error before anything else is read (the route is checked later, when
    the backend is known)."""
    from evalchemy.backends.endpoint import normalize

    for url in urls:
        if url and url != "local":
            normalize(url, route="chat")


def _backend(endpoint: str | None, name: str | None):
    """The backend named (or, unnamed, the one ``endpoint`` picks) and the endpoint it uses."""
    from evalchemy.backends.registry import BACKENDS, backend_for

    try:
        backend = backend_for(endpoint, name)
    except LookupError:
        raise UsageError(f"--backend {name}: no such backend; choose one of: {', '.join(BACKENDS)}") from None
    if backend.runs_here and endpoint not in (None, backend.endpoint_name):
        raise UsageError(f"--backend {backend.name} starts its model on this machine and takes no URL: drop "
                         "--endpoint")
    if not backend.runs_here and endpoint == "local":
        raise UsageError(f"--endpoint local is the embedded model, not a {backend.name} endpoint: pass a URL, or "
                         "--backend local")
    if backend.runs_here:
        endpoint = backend.endpoint_name
    return backend, endpoint or backend.default_endpoint


def check_tasks_offline(plan, backend, config_file: Path) -> None:
    """Every enabled task can run on this backend: checked without a server (exit 2, a config that cannot run)."""
    if backend.loglikelihood:
        return
    from evalchemy.execution.preflight import task_problems

    problems = task_problems(plan, backend)
    if problems:
        raise ConfigError(str(config_file), [cli_words("\n  ".join(problems))])


def check_endpoints(endpoint, more_endpoints, proxy_url, batch_size, backend_name=None):
    """The backend (named, or picked by ``--endpoint``), its endpoint and normalized URLs, the checked ``--proxy``
    and the batch size it allows; a malformed URL is a usage error, checked first."""
    from evalchemy.backends.registry import backend_for

    backend, endpoint = _backend(endpoint, backend_name)
    # a malformed URL is a usage error, checked first
    endpoint_urls = backend.normalize(endpoint) if endpoint and not backend.runs_here else None
    for extra in more_endpoints:
        if backend.runs_here or backend_for(extra).runs_here:
            raise UsageError("--endpoint local cannot be combined with other endpoints: give only remote servers")
        backend.normalize(extra)
    if proxy_url is not None:
        from evalchemy.proxy import check

        if backend.runs_here:
            raise UsageError(f"--proxy is for a remote endpoint: {backend.description} runs on this "
                             "machine and is always reached directly; drop --proxy")
        try:
            proxy_url = check(proxy_url)
        except ValueError as err:
            raise UsageError(f"--proxy {proxy_url.rsplit('@', 1)[-1]!r}: {err}") from None
    if backend.one_request_at_a_time or backend.one_prompt_per_request:
        if batch_size not in (None, 1):
            logger.warning("--endpoint %s serves one prompt per request: --batch-size %d is ignored", endpoint,
                           batch_size)
        batch_size = 1
    return backend, endpoint, endpoint_urls, proxy_url, batch_size


def probe(opts, plan, api_key, backend) -> None:
    """--dry-run --probe (the tasks already checked by ``check_tasks_offline``): the preflight's checks against the
    endpoint, then the commands with what they found."""
    import json

    from evalchemy.execution.preflight import preflight

    if backend.runs_here:
        raise UsageError(f"--probe checks a server at --endpoint; the {backend.name} backend runs on this machine "
                         "(drop --probe: --dry-run shows its commands)")
    found = preflight(opts, plan, api_key, backend=backend)
    sys.stdout.write(f"# backend {backend.name} at {found.endpoint.display}, model {found.model}, tokenizer "
                     f"{found.tokenizer.path or found.tokenizer.backend}\n")
    sys.stdout.write(f"# capabilities: {json.dumps(found.capabilities, sort_keys=True)}\n")
    print_dry_run(plan, found.model_settings, opts.run_dir, sys.stdout)
