"""The run command (flags only), the group of commands on finished runs, and the process entry point main()."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from evalchemy import __version__, redaction
from evalchemy.cli.common import (  # noqa: F401 - _load is part of the commands' shared set-up, re-exported
    EXIT_CODES_HELP,
    EvalchemyCommand,
    _include_paths,
    _load,
    attach_run_logs,
    data_dir_option,
    home,
    resolve_data_dir,
    setup_console_logging,
)
from evalchemy.cli.render import TerminalEvents, dry_run_settings, print_benchmarks, print_dry_run, print_scores
from evalchemy.cli.transfer_commands import export_data, export_main, import_data, import_main  # noqa: F401
from evalchemy.cli.choose import check_endpoints, check_tasks_offline, check_url_syntax, probe as probe_endpoint
from evalchemy.errors import EvalchemyError, UsageError

logger = logging.getLogger("evalchemy")


@click.command(cls=EvalchemyCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
               epilog=EXIT_CODES_HELP)
@click.option("--endpoint", metavar="URL", multiple=True,
              help="vLLM OpenAI-compatible server: http://host:8000, http://host:8000/v1 or "
                   "http://host/prefix/v1/completions; 'local' starts the embedded SmolLM2 model on 127.0.0.1. "
                   "Repeated: servers of the same model, benchmarks run in parallel, one per server at a time.")
@click.option("--backend", "backend_name", metavar="NAME",
              help="How the model is reached: vllm-server (an OpenAI-compatible completions server at --endpoint), "
                   "local (the embedded model, as --endpoint local), openai-completions (the OpenAI API; the key "
                   "from OPENAI_API_KEY), chat (an OpenAI-compatible chat completions server: LM Studio, Ollama, "
                   "vLLM's chat route; generation tasks only), hf (a checkpoint folder run with transformers, "
                   "--model PATH), vllm (a checkpoint folder loaded by vLLM in the worker). Default: the config's "
                   "model.backend, else vllm-server, or local with --endpoint local.")
@click.option("--model", metavar="NAME", help="Served model name (hf, vllm: the checkpoint folder). Default: the one "
                                                "model GET /v1/models lists.")
@click.option("--tokenizer", metavar="PATH",
              help="Local tokenizer folder (or a model id in the local Hugging Face cache). Default: the model "
                   "folder the server reports, if it is on this disk, else the server's tokenizer endpoints.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Prompts per request; overrides every task's batch_size in the config. Default: the task's "
                   "batch_size, else 8 (1 with --endpoint local).")
@click.option("--run-id", metavar="ID",
              help="Names the results folder and files ([A-Za-z0-9._-], up to 128). Default: YYYYMMDD_HHMMSS_PID.")
@click.option("--config", "config_path", metavar="FILE", help="Config file. Default: configs/eval_config.json.")
@click.option("--output", "output_dir", metavar="DIR", help="Results folder. Default: results.")
@click.option("--gpu", metavar="IDS", help="GPU ids for what the run starts (sets CUDA_VISIBLE_DEVICES), e.g. 0,1.")
@click.option("--max-length", type=click.IntRange(min=2), metavar="N",
              help="Longest prompt + answer in tokens (lm-eval max_length). Default: the server's max_model_len.")
@click.option("--concurrency", type=click.IntRange(min=1, max=1024), default=None, metavar="N",
              help="Requests in flight at once; overrides every task's concurrency in the config. Default: the "
                   "task's concurrency, else 16 (1 with --endpoint local).")
@click.option("--request-timeout", type=click.IntRange(min=1), default=None, metavar="SECONDS",
              help="Per-request timeout. Default: 120.")
@click.option("--include-path", "include_paths", multiple=True, metavar="DIR",
              help="Extra folder of lm-eval task YAMLs (repeatable). The project's tasks/ folder is always included.")
@data_dir_option
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, metavar="NAME",
              help="Environment variable holding the endpoint's API key (sent as a Bearer token, never written).")
@click.option("--proxy", "proxy_url", metavar="URL",
              help="Send every request to the endpoint (the preflight and all of lm-eval's) through this HTTP proxy, "
                   "e.g. http://proxy:3128. Default: straight to the endpoint; http_proxy, https_proxy and all_proxy "
                   "are not used for it.")
@click.option("--client", type=click.Choice(["evalchemy", "lm-eval"]), default="evalchemy", show_default=True,
              help="Client for the endpoint: evalchemy's lean one (same results, less CPU per prompt) or lm-eval's "
                   "stock local-completions. The embedded model always uses lm-eval's.")
@click.option("--notify-url", metavar="URL",
              help="POST a JSON (run id, status, scores, summary path) here when the run ends; a failure to notify "
                   "is logged and does not change the exit code.")
@click.option("--store", metavar="URL",
              help="Results store the run records itself in at its end: a SQLite file or sqlite:///FILE, or "
                   "postgresql://USER@HOST:PORT/DB. Default: $EVALCHEMY_STORE, else evalchemy.db in --output.")
@click.option("--max-failed-requests", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
              help="A benchmark with more requests than this that got an empty answer is failed.")
@click.option("--online", is_flag=True,
              help="Let lm-eval download datasets and tokenizers from the hub. By default runs are offline and stop "
                   "before the first benchmark when a dataset is not on this machine.")
@click.option("--fresh", is_flag=True,
              help="Start this run id over: delete its folder first. Without it, re-running a run id keeps the "
                   "benchmarks that succeeded and re-sends no request already answered.")
@click.option("--report", "write_report", is_flag=True,
              help="Also write report.html and report.md in the run folder (see: run_evalchemy.sh report --help).")
@click.option("--list-benchmarks", is_flag=True,
              help="Show the config's benchmarks and tasks, then exit; writes nothing.")
@click.option("--validate-config", is_flag=True,
              help="Check the config and report every problem, then exit; writes nothing.")
@click.option("--dry-run", is_flag=True,
              help="Print the lm_eval command each benchmark would run, in order; contacts nothing. Writes only the "
                   "task files generated for dataset entries (content-addressed, in ~/.cache/evalchemy), so that the "
                   "printed commands run as they are.")
@click.option("--probe", is_flag=True,
              help="With --dry-run: contact the endpoint and run the preflight's checks (the model, the completions "
                   "or chat check, the echo check); the commands then show the settings they found, and a "
                   "'# capabilities' line what the server takes. Sends a few one-token requests; writes nothing.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="Detail on the terminal and in the run log.")
@click.version_option(__version__, prog_name="evalchemy")
def cli(endpoint, model, tokenizer, batch_size, run_id, config_path, output_dir, gpu, max_length, concurrency,
        request_timeout, include_paths, data_dir, api_key_env, notify_url, store, max_failed_requests, online, fresh, write_report, list_benchmarks,
        validate_config, dry_run, log_level, proxy_url=None, client="evalchemy", backend_name=None, probe=False):
    """Run lm-evaluation-harness benchmarks from a config file against a vLLM endpoint.

    Writes OUTPUT/RUN_ID/: the run log, the errors log, one results file and one log per benchmark, and
    evalchemy_summary_RUN_ID.json, whose path is the only thing printed on stdout, and records the run in the
    results store. Other commands: compare, leaderboard, history, store (each with --help).
    """
    from evalchemy import plan as plan_mod
    from evalchemy.execution import runid

    log_level = log_level.upper()
    setup_console_logging(log_level)
    endpoint, more_endpoints = (endpoint[0] if endpoint else None), tuple(endpoint[1:])
    modes = [name for name, on in (("--list-benchmarks", list_benchmarks), ("--validate-config", validate_config),
                                   ("--dry-run", dry_run)) if on]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(modes)} cannot be combined: pick one")
    config_file = Path(config_path) if config_path else home() / "configs" / "eval_config.json"
    output = Path(output_dir) if output_dir else home() / "results"
    run_id = runid.check_run_id(run_id if run_id is not None else runid.default_run_id())
    gpu = runid.check_gpu(gpu)
    plan_mod.format_model_args({k: v for k, v in (("model", model), ("tokenizer", tokenizer)) if v})
    api_key, notify_secrets = _secrets(api_key_env, notify_url)
    includes = _include_paths(include_paths)
    check_url_syntax((endpoint, *more_endpoints))
    cfg, index = _load(config_file, includes)
    chosen = cfg.model  # the config's model section; flags override it
    endpoint, model, tokenizer = endpoint or chosen.endpoint, model or chosen.name, tokenizer or chosen.tokenizer
    backend, endpoint, endpoint_urls, proxy_url, batch_size = check_endpoints(
        endpoint, more_endpoints, proxy_url, batch_size, backend_name or chosen.backend)
    local_tasks = plan_mod.LocalTasks(data_dir=resolve_data_dir(data_dir), home=home(),
                                      write_files=not (validate_config or list_benchmarks))
    plan = plan_mod.build_plan(cfg, local_tasks, index, batch_size=batch_size, include_paths=includes,
                               concurrency=concurrency)

    if validate_config or dry_run:  # a run finds the same at its preflight (exit 3, with a summary)
        check_tasks_offline(plan, backend, config_file)
    if validate_config or list_benchmarks:
        _show_config(cfg, plan, config_file, validate_config)
        return
    if not plan.to_run:
        raise UsageError(f"{config_file}: nothing to run: every benchmark is disabled or lists only disabled tasks")
    if probe and not dry_run:
        raise UsageError("--probe goes with --dry-run: it checks the endpoint and prints the commands it would run")
    if dry_run and not probe:
        return _dry_run(cfg, plan, output / run_id, endpoint_urls, backend, model, tokenizer, concurrency,
                        request_timeout, max_length, gpu)
    if backend.requires_key and api_key is None:
        raise UsageError(f"--backend {backend.name} needs its API key: set {api_key_env} in the environment")
    opts = replace(_run_options(endpoint, run_id, output, model, tokenizer, batch_size, gpu, max_length, concurrency,
                                request_timeout, log_level, max_failed_requests, online, proxy_url, store,
                                more_endpoints, client), backend=backend.name)
    if probe:
        probe_endpoint(opts, plan, api_key, backend)
        return
    _start_run(opts, cfg, plan, index, api_key, notify_secrets, notify_url, fresh, write_report)


def _dry_run(cfg, plan, run_dir: Path, *settings_from) -> None:
    """--dry-run: the config's warnings, then each lm_eval command (settings from the flags, placeholders for the
    rest)."""
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    print_dry_run(plan, dry_run_settings(plan, *settings_from), run_dir, sys.stdout)


def _run_options(endpoint, run_id, output, model, tokenizer, batch_size, gpu, max_length, concurrency,
                 request_timeout, log_level, max_failed_requests, online, proxy_url, store, more_endpoints, client):
    """The run's options from its checked flags."""
    from evalchemy import plan as plan_mod

    if not endpoint:
        raise UsageError("--endpoint is required to run: pass the vLLM server URL, e.g. "
                         "--endpoint http://gpu-box:8000/v1/completions")
    from evalchemy.execution.options import RunOptions
    from evalchemy.store.url import resolve_url

    opts = RunOptions(
        endpoint=endpoint, run_id=run_id, output_dir=output.resolve(), model=model,
        tokenizer=str(Path(tokenizer).expanduser().resolve()) if tokenizer and Path(tokenizer).expanduser().exists()
        else tokenizer,
        batch_size=batch_size, gpu=gpu, max_length=max_length,
        concurrency=concurrency or plan_mod.DEFAULT_CONCURRENCY,
        request_timeout=request_timeout or plan_mod.DEFAULT_REQUEST_TIMEOUT_S,
        log_level=log_level,
        max_failed_requests=max_failed_requests,
        online=online,
        home=home(),
        proxy=proxy_url,
        store=resolve_url(store, output),
        more_endpoints=more_endpoints,
        client=client,
    )
    return opts


def _secrets(api_key_env: str, notify_url: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The API key from the environment and the notification URL's password, protected from every log."""
    api_key = os.environ.get(api_key_env)
    notify_secrets = _notify_mod().secrets(notify_url) if notify_url else ()
    redaction.protect(api_key, *notify_secrets)
    if api_key is None and api_key_env != "OPENAI_API_KEY":
        raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    return api_key, notify_secrets


def _show_config(cfg, plan, config_file: Path, validate_config: bool) -> None:
    """--validate-config's verdict, or --list-benchmarks' table."""
    if not validate_config:
        print_benchmarks(cfg, plan)
        return
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    enabled = len(plan.to_run)
    runs = sum(len(b.runs) for b in plan.to_run)
    click.echo(f"{config_file}: valid ({len(cfg.benchmarks)} benchmarks, {enabled} enabled, {runs} lm-eval runs)")


def _start_run(opts, cfg, plan, index, api_key, notify_secrets, notify_url, fresh, write_report) -> None:
    """The run itself, under the output folder's lock; exits with the summary's exit code."""
    from evalchemy.execution import runner
    from evalchemy.execution import signals, storage
    from evalchemy.execution.lock import RunLock

    storage.check_output_dir(opts.output_dir, opts.run_id)
    ctx = click.get_current_context()
    # from here a signal is recorded, and raised only where the run can stop its work (see signals.py); the CLI's
    # own process keeps this handler until it exits, so that its exit code is always the summary's
    guard = signals.reset().install()
    lock = RunLock(opts.output_dir, opts.run_id)
    try:
        with storage.room_to_start(opts.output_dir):
            lock.acquire()
            if fresh and opts.run_dir.exists():
                import shutil

                shutil.rmtree(opts.run_dir)
            logs = attach_run_logs(opts.run_dir, opts.run_id, opts.log_level)
        result = runner.execute(opts, cfg, plan, TerminalEvents(), api_key=api_key, index=index,
                                other_secrets=notify_secrets)
        if write_report and result.summary_error is None:
            from evalchemy.reports.run_report import write_run_report

            try:
                write_run_report(opts.run_dir)
            except (OSError, EvalchemyError) as err:  # the run's outcome and exit code stand
                logger.error("could not write the report: %s (retry: run_evalchemy.sh report %s)", err, opts.run_id)
        if notify_url:
            before = len(guard.received)
            _notify_mod().notify(notify_url, result.summary, result.summary_path)
            if len(guard.received) > before:
                logger.warning("%s received while sending the notification: it was still sent; exit code %d, "
                               "as the summary says", guard.names(), result.exit_code)
    finally:
        lock.release()
        if not (ctx.obj or {}).get("process"):
            guard.uninstall()
    _report_disk_full(result, logs, opts.run_dir)
    if any(r.status != "skipped" for r in result.records):
        print_scores(result)
    if result.summary_error is None:
        click.echo(str(result.summary_path))
    ctx.exit(result.exit_code)



def _notify_mod():
    from evalchemy.execution import notify

    return notify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def commands():
    """Commands on finished runs: run_evalchemy.sh COMMAND ... (a run itself starts with flags)."""


def _report_disk_full(result, logs, run_dir: Path) -> None:
    """One error line per thing a full disk cost the run, each naming the path and the space left."""
    from evalchemy.execution.storage import free_space

    if result.disk_full:
        click.echo(f"error: disk full: {run_dir} ({free_space(run_dir)}): benchmark(s) {', '.join(result.disk_full)} "
                   "failed for lack of space; free some space (or pass another --output), then run the same --run-id "
                   "again to resume", err=True)
    if result.summary_error is not None:
        click.echo(f"error: {result.summary_error}: the run's outcome (exit code {result.exit_code}) is only in this "
                   "message and the notification", err=True)
    for handler in logs:
        if handler.dropped:
            click.echo(f"warning: {handler.dropped} line(s) of {handler.baseFilename} were not written: disk full "
                       f"({free_space(run_dir)})", err=True)


def main(argv: list[str] | None = None) -> None:
    from evalchemy.execution import signals
    from evalchemy.cli import queue_commands, report_commands, store_commands

    args = list(sys.argv[1:] if argv is None else argv)
    report_commands.register(commands)
    queue_commands.register(commands, cli)
    for name, command in store_commands.group.commands.items():
        commands.add_command(command, name)
    if args and args[0] in commands.commands:  # a subcommand; runs start with flags
        commands.main(args=args, prog_name="run_evalchemy.sh")
        return
    try:
        cli.main(args=argv, prog_name="run_evalchemy.sh", obj={"process": True})  # this process is the run's own
    finally:
        signals.guard().ignore_from_now()
