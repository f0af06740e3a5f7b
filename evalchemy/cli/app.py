"""Command line: the only module that talks to the terminal and turns errors into exit codes."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from evalchemy import __version__, redaction
from evalchemy.errors import (
    EXIT_INTERNAL,
    EXIT_SIGINT,
    ConfigError,
    EvalchemyError,
    UsageError,
)

logger = logging.getLogger("evalchemy")

EXIT_CODES_HELP = """\b
Exit codes:
  0    every benchmark succeeded (or a check passed)
  1    unexpected internal error
  2    usage or config error (nothing was run or written)
  3    preflight failed: endpoint, model, tokenizer or data unusable; nothing was run
  4    the run finished but at least one benchmark failed or timed out (or was lost to a full disk)
  5    another run holds the lock on the output folder
  6    compare --fail-on-regression: a score dropped by more than the threshold, beyond noise
  130  interrupted by SIGINT (Ctrl-C); 143 by SIGTERM
"""

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def home() -> Path:
    """The project folder: defaults (config, results, tasks) live there, whatever the working directory."""
    return Path(os.environ.get("EVALCHEMY_HOME") or os.getcwd())


def data_dir_option(func):
    return click.option("--data-dir", metavar="DIR",
                        help="Where the tasks' local datasets are (dataset.path is relative to it). Default: "
                             "$EVALCHEMY_DATA_DIR, else data/benchmarks.")(func)


def resolve_data_dir(value: str | None) -> Path:
    """``--data-dir``, else ``$EVALCHEMY_DATA_DIR``, else ``data/benchmarks`` in the project folder."""
    chosen = value or os.environ.get("EVALCHEMY_DATA_DIR")
    return (Path(chosen).expanduser() if chosen else home() / "data" / "benchmarks").resolve()


def _stderr_console() -> Console:
    """Rich on stderr; under cron (no terminal) a fixed 120 columns so tables are not squeezed."""
    return Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 120)


def setup_console_logging(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=_stderr_console(), show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.setLevel(level)
    root.handlers[:] = [handler]
    redaction.guard_logging()


def attach_run_logs(run_dir: Path, run_id: str, level: str) -> list:
    """The run log (everything at --log-level) and the errors log (warnings and errors) in the run folder."""
    from evalchemy.execution.storage import RunLogHandler

    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers = []
    for path, file_level in ((run_dir / f"evalchemy_{run_id}.log", level),
                             (run_dir / f"evalchemy_errors_{run_id}.log", "WARNING")):
        handler = RunLogHandler(path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(file_level)
        root.addHandler(handler)
        handlers.append(handler)
    redaction.guard_logging()
    return handlers


def _load(config_path: Path, include_paths: tuple[Path, ...]):
    from evalchemy.config import model as config_mod
    from evalchemy.engines.lm_eval import taskindex

    index = taskindex.load_index(list(include_paths))
    return config_mod.load_config(config_path.resolve() if config_path.exists() else config_path, index), index


def _include_paths(extra: tuple[str, ...]) -> tuple[Path, ...]:
    paths = []
    bundled = home() / "tasks"
    if bundled.is_dir():
        paths.append(bundled.resolve())
    for item in extra:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise UsageError(f"--include-path {item}: not a folder")
        paths.append(path.resolve())
    return tuple(paths)


# ---------------------------------------------------------------------------------------------------------------
# Output of the control commands


def print_benchmarks(cfg, plan) -> None:
    table = Table(title=f"Benchmarks in {cfg.path}", show_lines=False)
    for column in ("#", "benchmark", "enabled", "description", "task", "lm-eval tasks", "fewshot", "batch", "limit",
                   "priority", "timeout"):
        table.add_column(column, overflow="fold")
    for position, bench in enumerate(plan.benchmarks, 1):
        number = str(position) if bench.skip_reason is None else "-"
        enabled = "yes" if bench.enabled else "no"
        spec = cfg.benchmarks[bench.name]
        first = True
        for name in spec.tasks:
            entry = cfg.tasks.get(name)
            run = next((r for r in bench.runs if r.entry == name), None)
            task_label = name if entry is None or entry.enabled else f"{name} (disabled)"
            row = [number if first else "", bench.name if first else "", enabled if first else "",
                   bench.description if first else "", task_label,
                   f"KMMLU format on {entry.dataset.path}" if entry and entry.dataset
                   else ", ".join(entry.tasks if entry else (name,))]
            source = run or entry
            row += [
                "-" if source is None or source.num_fewshot is None else str(source.num_fewshot),
                str(run.batch_size) if run else ("-" if entry is None or entry.batch_size is None
                                                 else str(entry.batch_size)),
                "all" if source is None or source.limit is None else str(source.limit),
                source.priority if source else "medium",
                f"{run.timeout}s" if run else ("-" if entry is None or entry.timeout is None else f"{entry.timeout}s"),
            ]
            table.add_row(*row)
            first = False
    Console(highlight=False, soft_wrap=False, width=max(160, Console().width)).print(table)


def dry_run_settings(plan, endpoint_urls, local, model, tokenizer, concurrency, request_timeout, max_length):
    """The model settings the commands show: what is known without the network, placeholders (noted on stderr)
    for what a run resolves from the server."""
    from dataclasses import replace

    from evalchemy import plan as plan_mod

    if endpoint_urls:
        base_url = endpoint_urls.completions_url
    elif local:
        base_url = "LOCAL_SERVER_URL"
        click.echo("note: --endpoint local: LOCAL_SERVER_URL is the embedded server's 127.0.0.1 address, "
                   "chosen at run time", err=True)
    else:
        base_url = "ENDPOINT_URL"
        click.echo("note: no --endpoint given: the commands show ENDPOINT_URL", err=True)
    needs_tokenizer = bool(tokenizer or plan.needs_loglikelihood)
    settings = plan_mod.ModelSettings(
        base_url=base_url, model=model or "MODEL",
        tokenizer=tokenizer or ("TOKENIZER" if plan.needs_loglikelihood else None),
        tokenizer_backend="huggingface" if needs_tokenizer else "none",
        tokenized_requests=needs_tokenizer,
        num_concurrent=concurrency or plan_mod.DEFAULT_CONCURRENCY,
        timeout=request_timeout or plan_mod.DEFAULT_REQUEST_TIMEOUT_S,
        max_length=max_length or plan_mod.DEFAULT_MAX_LENGTH,
    )
    if local:
        from evalchemy.backends import llamacpp as local_model

        return replace(settings, model=model or local_model.MODEL_ID,
                       tokenizer=tokenizer or str(local_model.tokenizer_location()),
                       tokenizer_backend=local_model.TOKENIZER_BACKEND,
                       tokenized_requests=local_model.TOKENIZED_REQUESTS,
                       num_concurrent=local_model.NUM_CONCURRENT, max_length=max_length or local_model.MAX_LENGTH,
                       single_stream=True, lm_eval_model=local_model.LM_EVAL_MODEL)
    if not model:
        click.echo("note: MODEL is read from GET /v1/models at run time (or pass --model)", err=True)
    if settings.tokenizer == "TOKENIZER":
        click.echo("note: TOKENIZER is resolved offline at run time (or pass --tokenizer)", err=True)
    return settings


def print_dry_run(plan, settings, run_dir: Path, out) -> None:
    from evalchemy.plan import lm_eval_argv, shell_line

    to_run = plan.to_run
    for position, bench in enumerate(to_run, 1):
        out.write(f"# [{position}/{len(to_run)}] {bench.name}: {bench.description}\n")
        for run in bench.runs:
            out.write(f"#   task {run.entry}: priority {run.priority}, timeout {run.timeout} s\n")
            if run.data_path:
                out.write(f"#   data: {run.data_path} ({_data_state(run)})\n")
            out.write(shell_line(lm_eval_argv(run, settings, str(run_dir / run.output_dir))) + "\n")
    for bench in plan.benchmarks:
        if bench.skip_reason:
            out.write(f"# skipped {bench.name}: {bench.skip_reason}\n")


def _data_state(run) -> str:
    from evalchemy.datasets import local as localdata

    try:
        data = localdata.detect(Path(run.data_path), run.dataset.subset)
    except localdata.MissingData:
        return f"not on this machine: {localdata.IMPORT_COMMAND}"
    except localdata.DataError as err:
        return f"unusable: {err}"
    return f"{data.kind}, splits {', '.join(data.splits)}"


def print_scores(result) -> None:
    console = _stderr_console()
    table = Table(title=f"Run {result.summary['run_id']}: {result.summary['status']}")
    for column in ("benchmark", "status", "metric", "score", "± stderr", "samples", "time"):
        table.add_column(column, justify="right" if column in ("score", "± stderr", "samples", "time") else "left")
    for record in result.records:
        if record.status == "skipped" and record.error and "disabled" in record.error:
            continue
        metric = record.primary_metric or ""
        shown_any = False
        for task, metrics in record.metrics.items():
            for label, value in metrics.items():
                if label.split(",")[0] != metric:
                    continue
                stderr = value.get("stderr")
                table.add_row(record.name if not shown_any else "", record.status if not shown_any else "",
                              f"{task} {label}", f"{value['value']:.4f}",
                              "" if stderr is None else f"{stderr:.4f}", str(record.n_samples.get(task, "")),
                              f"{record.duration_s:.1f}s" if not shown_any else "")
                shown_any = True
        if not shown_any:
            table.add_row(record.name, record.status, record.error or "", "", "", "", f"{record.duration_s:.1f}s")
    console.print(table)
    breakdown = result.summary["breakdown"]["benchmark"]
    subjects = {k: v for k, v in breakdown.items() if isinstance(v, dict)}
    for key, values in subjects.items():
        sub = Table(title=key)
        sub.add_column("subject")
        sub.add_column("accuracy", justify="right")
        for label, value in values.items():
            sub.add_row(label, f"{value:.4f}")
        console.print(sub)


class TerminalEvents:
    """Progress on a terminal (rich); under cron the run log's INFO lines are the progress."""

    def __init__(self) -> None:
        self.console = _stderr_console()
        self.live = sys.stderr.isatty()
        self.status = None

    def preflight_done(self, model, tokenizer) -> None:
        if self.live:
            self.console.print(f"model [bold]{model}[/], tokenizer {tokenizer.path or tokenizer.backend}")

    def benchmark_started(self, bench, position, total) -> None:
        if self.live:
            self._stop()
            self.status = self.console.status(f"[{position}/{total}] {bench.name}: running "
                                              f"{len(bench.runs)} lm-eval task(s)…")
            self.status.start()

    def task_run_done(self, outcome) -> None:
        if self.live:
            mark = {"success": "[green]ok[/]", "failed": "[red]failed[/]", "timeout": "[red]timeout[/]"}
            self.console.print(f"  {outcome.run.benchmark} / {outcome.run.entry}: {mark[outcome.status]} "
                               f"({outcome.duration_s:.1f} s)")

    def benchmark_done(self, record) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


# ---------------------------------------------------------------------------------------------------------------


class EvalchemyCommand(click.Command):
    """Turns the project's errors into messages on stderr and their exit codes (the only place that does)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConfigError as err:
            click.echo(f"error: {err}", err=True)
            click.echo("(exit code 2: config error; nothing was run)", err=True)
            ctx.exit(err.exit_code)
        except EvalchemyError as err:
            click.echo(f"error: {redaction.scrub(str(err))}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_SIGINT)
        except BrokenPipeError:  # stdout closed early (| head): nothing more to say
            sys.stderr.close()
            ctx.exit(0)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception:  # noqa: BLE001 - a bug: exit code 1 with the traceback
            logger.exception("internal error (please report it with this traceback)")
            ctx.exit(EXIT_INTERNAL)


@click.command(cls=EvalchemyCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
               epilog=EXIT_CODES_HELP)
@click.option("--endpoint", metavar="URL", multiple=True,
              help="vLLM OpenAI-compatible server: http://host:8000, http://host:8000/v1 or "
                   "http://host/prefix/v1/completions; 'local' starts the embedded SmolLM2 model on 127.0.0.1. "
                   "Repeated: servers of the same model, benchmarks run in parallel, one per server at a time.")
@click.option("--model", metavar="NAME", help="Served model name. Default: the one model GET /v1/models lists.")
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
@click.option("--list-benchmarks", is_flag=True, help="Show the config's benchmarks and tasks, then exit.")
@click.option("--validate-config", is_flag=True, help="Check the config and report every problem, then exit.")
@click.option("--dry-run", is_flag=True,
              help="Print the lm_eval command each benchmark would run, in order; touch nothing.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True, help="Detail on the terminal and in the run log.")
@click.version_option(__version__, prog_name="evalchemy")
def cli(endpoint, model, tokenizer, batch_size, run_id, config_path, output_dir, gpu, max_length, concurrency,
        request_timeout, include_paths, data_dir, api_key_env, notify_url, store, max_failed_requests, online, fresh, write_report, list_benchmarks,
        validate_config, dry_run, log_level, proxy_url=None, client="evalchemy"):
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
    api_key = os.environ.get(api_key_env)
    if notify_url:
        from evalchemy.execution import notify as notify_mod
    notify_secrets = notify_mod.secrets(notify_url) if notify_url else ()
    redaction.protect(api_key, *notify_secrets)
    if api_key is None and api_key_env != "OPENAI_API_KEY":
        raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    includes = _include_paths(include_paths)
    from evalchemy.backends.openai_completions import normalize
    from evalchemy.backends.llamacpp import LOCAL_ENDPOINT

    local = endpoint == LOCAL_ENDPOINT
    # a malformed URL is a usage error, checked first
    endpoint_urls = normalize(endpoint) if endpoint and not local else None
    for extra in more_endpoints:
        if local or extra == LOCAL_ENDPOINT:
            raise UsageError("--endpoint local cannot be combined with other endpoints: give only remote servers")
        normalize(extra)
    if proxy_url is not None:
        from evalchemy.proxy import check

        if local:
            raise UsageError("--proxy is for a remote endpoint: the embedded model (--endpoint local) runs on this "
                             "machine and is always reached directly; drop --proxy")
        try:
            proxy_url = check(proxy_url)
        except ValueError as err:
            raise UsageError(f"--proxy {proxy_url.rsplit('@', 1)[-1]!r}: {err}") from None
    if local:
        if batch_size not in (None, 1):
            logger.warning("--endpoint local serves one prompt per request: --batch-size %d is ignored", batch_size)
        batch_size = 1

    cfg, index = _load(config_file, includes)
    local_tasks = plan_mod.LocalTasks(data_dir=resolve_data_dir(data_dir), home=home())
    plan = plan_mod.build_plan(cfg, local_tasks, index, batch_size=batch_size, include_paths=includes,
                               concurrency=concurrency)

    if validate_config:
        for warning in cfg.warnings:
            click.echo(f"warning: {warning}", err=True)
        enabled = len(plan.to_run)
        runs = sum(len(b.runs) for b in plan.to_run)
        click.echo(f"{config_file}: valid ({len(cfg.benchmarks)} benchmarks, {enabled} enabled, "
                   f"{runs} lm-eval runs)")
        return
    if list_benchmarks:
        print_benchmarks(cfg, plan)
        return
    if not plan.to_run:
        raise UsageError(f"{config_file}: nothing to run: every benchmark is disabled or lists only disabled tasks")

    if dry_run:
        for warning in cfg.warnings:
            click.echo(f"warning: {warning}", err=True)
        settings = dry_run_settings(plan, endpoint_urls, local, model, tokenizer, concurrency, request_timeout,
                                    max_length)
        print_dry_run(plan, settings, output / run_id, sys.stdout)
        return

    if not endpoint:
        raise UsageError("--endpoint is required to run: pass the vLLM server URL, e.g. "
                         "--endpoint http://gpu-box:8000/v1/completions")
    from evalchemy.execution import runner
    from evalchemy.store.db import resolve_url

    opts = runner.RunOptions(
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
    from evalchemy.execution import signals, storage
    from evalchemy.execution.lock import RunLock

    storage.check_output_dir(output, run_id)
    ctx = click.get_current_context()
    # from here a signal is recorded, and raised only where the run can stop its work (see signals.py); the CLI's
    # own process keeps this handler until it exits, so that its exit code is always the summary's
    guard = signals.reset().install()
    lock = RunLock(output, run_id)
    try:
        with storage.room_to_start(output):
            lock.acquire()
            if fresh and opts.run_dir.exists():
                import shutil

                shutil.rmtree(opts.run_dir)
            logs = attach_run_logs(opts.run_dir, run_id, log_level)
        result = runner.execute(opts, cfg, plan, TerminalEvents(), api_key=api_key, index=index,
                                other_secrets=notify_secrets)
        if write_report and result.summary_error is None:
            from evalchemy.reports.run_report import write_run_report

            try:
                write_run_report(opts.run_dir)
            except (OSError, EvalchemyError) as err:  # the run's outcome and exit code stand
                logger.error("could not write the report: %s (retry: run_evalchemy.sh report %s)", err, run_id)
        if notify_url:
            before = len(guard.received)
            notify_mod.notify(notify_url, result.summary, result.summary_path)
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
    queue_commands.register(commands)
    for name, command in store_commands.group.commands.items():
        commands.add_command(command, name)
    if args and args[0] in commands.commands:  # a subcommand; runs start with flags
        commands.main(args=args, prog_name="run_evalchemy.sh")
        return
    try:
        cli.main(args=argv, prog_name="run_evalchemy.sh", obj={"process": True})  # this process is the run's own
    finally:
        signals.guard().ignore_from_now()


# ---------------------------------------------------------------------------------------------------------------
# Carrying local datasets to a closed network: scripts/export_data.sh and scripts/import_data.sh

TRANSFER_EXIT_CODES = """\b
Exit codes:
  0    done
  1    unexpected internal error
  2    usage or config error, or (import) files in the data folder that differ and no --replace
  3    a dataset is missing or unusable, or the archive is damaged, tampered with or incomplete
"""


def _rows(splits: dict) -> str:
    return ", ".join(f"{split} {n}" for split, n in splits.items()) + " rows"


@click.command(cls=EvalchemyCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
               epilog=TRANSFER_EXIT_CODES)
@click.option("--config", "config_path", metavar="FILE", help="Config file. Default: configs/eval_config.json.")
@click.option("--benchmark", "benchmarks", multiple=True, metavar="NAME",
              help="Export the datasets of this benchmark, even if disabled (repeatable). Default: every enabled "
                   "benchmark's.")
@click.option("--output", "output", metavar="ARCHIVE", default="evalchemy_data.tar.gz", show_default=True,
              help="The archive to write (.tar.gz).")
@click.option("--include-path", "include_paths", multiple=True, metavar="DIR",
              help="Extra folder of lm-eval task YAMLs (repeatable), as for the run.")
@data_dir_option
def export_data(config_path, benchmarks, output, include_paths, data_dir):
    """On a connected machine: pack the datasets a config needs into one archive with a manifest (names, splits,
    row counts, sha256 of every file): each dataset block's data, fetched from its dataset.source first when the
    data folder lacks it, and a saved copy (data folder: hub/<repo>/<config>) of the hub dataset of every lm-eval
    task it runs. Prints the archive's path.
    """
    from evalchemy.datasets import transfer

    setup_console_logging("INFO")
    config_file = Path(config_path) if config_path else home() / "configs" / "eval_config.json"
    cfg, index = _load(config_file, _include_paths(include_paths))
    report = transfer.export_archive(cfg, resolve_data_dir(data_dir), Path(output).expanduser().resolve(),
                                     tuple(benchmarks), index=index, home=home())
    for item in report.datasets:
        click.echo(f"{item.state} {item.path} for task {item.task} ({item.kind}: {_rows(item.splits)})", err=True)
    click.echo(f"{report.files} files, {report.bytes} bytes; on the closed machine: scripts/import_data.sh "
               f"{report.archive.name}", err=True)
    click.echo(str(report.archive))


@click.command(cls=EvalchemyCommand, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
               epilog=TRANSFER_EXIT_CODES)
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Overwrite files in the data folder that hold different data.")
@data_dir_option
def import_data(archive, replace, data_dir):
    """On the closed machine: check ARCHIVE (made by scripts/export_data.sh) against its manifest, every file's
    sha256 and every dataset's rows, then put its datasets into the data folder. A damaged, tampered or partial
    archive is refused and the data folder is left as it was.
    """
    from evalchemy.datasets import transfer

    setup_console_logging("INFO")
    report = transfer.import_archive(archive, resolve_data_dir(data_dir), replace=replace)
    for item in report.datasets:
        click.echo(f"{item.state} {report.data_dir / item.path} for task {item.task} ({item.kind}: "
                   f"{_rows(item.splits)})", err=True)
    click.echo(f"{report.files} files written into {report.data_dir}", err=True)


def export_main() -> None:
    export_data.main(prog_name="scripts/export_data.sh")


def import_main() -> None:
    import_data.main(prog_name="scripts/import_data.sh")
