"""What the run command shows: the benchmarks table, the dry run's commands, the scores and progress on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from evalchemy.cli.common import _stderr_console
from evalchemy.errors import cli_words



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


def dry_run_settings(plan, endpoint_urls, backend, model, tokenizer, concurrency, request_timeout, max_length,
                     gpu=None):
    """The model settings the commands show: what is known without the network, placeholders (noted on stderr)
    for what a run resolves from the server or the backend chooses at run time."""
    from evalchemy import plan as plan_mod

    planned = backend.planned_settings(model, gpu, max_length)
    if planned is not None:
        if not model:
            click.echo(f"note: no --model given: the commands show CHECKPOINT for the {backend.name} backend's "
                       "checkpoint folder", err=True)
        return planned
    if endpoint_urls:
        base_url = endpoint_urls.completions_url
    elif backend.placeholder_url:
        base_url = backend.placeholder_url
        click.echo(f"note: --endpoint {backend.endpoint}: {backend.placeholder_note}", err=True)
    else:
        base_url = "ENDPOINT_URL"
        click.echo("note: no --endpoint given: the commands show ENDPOINT_URL", err=True)
    tokenizer = None if backend.chat else tokenizer or backend.planned_tokenizer()
    needs_tokenizer = bool(tokenizer or plan.needs_loglikelihood) and not backend.chat
    settings = plan_mod.ModelSettings(
        base_url=base_url, model=model or backend.model_id or "MODEL",
        tokenizer=tokenizer or ("TOKENIZER" if plan.needs_loglikelihood else None),
        tokenizer_backend="huggingface" if needs_tokenizer else "none",
        tokenized_requests=needs_tokenizer and not backend.string_prompts,
        num_concurrent=1 if backend.one_request_at_a_time else concurrency or plan_mod.DEFAULT_CONCURRENCY,
        timeout=request_timeout or plan_mod.DEFAULT_REQUEST_TIMEOUT_S,
        max_length=max_length or backend.default_max_length or plan_mod.DEFAULT_MAX_LENGTH,
        single_stream=backend.one_request_at_a_time,
        lm_eval_model=backend.lm_eval_model or plan_mod.LM_EVAL_MODEL,
        chat=backend.chat,
    )
    if not model and backend.model_id is None:
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

    def words(self, message: str) -> str:  # Events.words: a message's settings shown as this CLI's flags
        return cli_words(message)

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

