"""The end of a run: every benchmark recorded, the exit code chosen, the summary written (and stored)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from evalchemy import redaction
from evalchemy.backends import openai_completions as endpoint_mod
from evalchemy.backends.base import Backend
from evalchemy.config.model import Config
from evalchemy.errors import EXIT_OK, Interrupted, UsageError, run_exit_code
from evalchemy.execution import signals, storage
from evalchemy.execution.options import RunOptions, RunResult
from evalchemy.execution.preflight import Preflight
from evalchemy.execution.records import benchmark_record
from evalchemy.execution.storage import DiskFullError, free_space, is_disk_full, write_json_with_room
from evalchemy.plan import Plan
from evalchemy.results.summary import BenchmarkRecord, build_summary, now_iso, run_status, versions

logger = logging.getLogger(__name__)


def _backend_record(backend: Backend, pre: Preflight | None) -> dict:
    """The summary's ``backend``: registry name, the lm-eval model the worker ran and its arguments (the URL as the
    summary's endpoint, without credentials)."""
    if pre is None:
        return {"name": backend.name, "lm_eval_model": None, "model_args": None}
    args = pre.model_settings.model_args()
    if "base_url" in args:
        args["base_url"] = backend.endpoint_id(endpoint_mod.strip_credentials(str(args["base_url"])))
    record = {"name": backend.name, "lm_eval_model": pre.model_settings.worker_model, "model_args": args}
    if pre.capabilities is not None:
        record["capabilities"] = pre.capabilities
    return record



def finish(opts: RunOptions, config: Config, plan: Plan, records: list[BenchmarkRecord], pre: Preflight | None,
            preflight_error: str | None, interrupted: Interrupted | None, internal: BaseException | None,
            backend: Backend, summary_path: Path, started_at: str, t0: float, scan: dict | None = None) -> RunResult:
    """Complete the records, pick the exit code and write the summary (kept in memory until then)."""
    run_dir = opts.run_dir
    _record_the_rest(plan, records, pre, interrupted, internal, run_dir)
    status = run_status(records, interrupted is not None, preflight_error)
    if internal is not None:
        status = "failed"
    exit_code = run_exit_code(internal=internal is not None, interrupted=interrupted,
                              preflight_failed=bool(preflight_error), succeeded=status == "success")
    late = signals.guard().received if interrupted is None and internal is None else []
    if late:
        logger.warning("%s received once the run's work was over (after the last benchmark finished): it ends as "
                       "its summary says (exit code %d)", signals.guard().names(), exit_code)
    disk_full = [r.name for r in records if r.error and is_disk_full(r.error)]
    error = _run_error(preflight_error, interrupted, internal, disk_full, run_dir)
    summary = build_summary(
        run_id=opts.run_id,
        status=status,
        exit_code=exit_code,
        started_at=started_at,
        finished_at=now_iso(),
        duration_s=time.monotonic() - t0,
        endpoint=backend.endpoint_id(endpoint_mod.strip_credentials(pre.endpoint.completions_url)
                                     if pre else _safe_display(opts.endpoint)),
        model=pre.model if pre else opts.model,
        tokenizer={"backend": pre.tokenizer.backend, "path": pre.tokenizer.path, "source": pre.tokenizer.source}
        if pre else None,
        config_path=str(config.path),
        config_sha256=config.sha256,
        settings=_settings(opts, pre),
        versions=versions(),
        records=records,
        files={
            "run_log": f"evalchemy_{opts.run_id}.log",
            "errors_log": f"evalchemy_errors_{opts.run_id}.log",
            "summary": summary_path.name,
        },
        error=error,
        secrets=scan,
        backend=_backend_record(backend, pre),
    )
    return _write(opts, summary_path, redaction.scrub_data(summary), exit_code, records, disk_full)


def _write(opts: RunOptions, summary_path: Path, summary: dict, exit_code: int, records: list[BenchmarkRecord],
           disk_full: list[str]) -> RunResult:
    """Write the summary where space was kept for it, then record the run in the store."""
    run_dir, status = opts.run_dir, summary["status"]
    result = RunResult(summary=summary, summary_path=summary_path, exit_code=exit_code, records=records,
                       disk_full=disk_full)
    storage.release_summary_space(run_dir)
    try:
        write_json_with_room(summary_path, summary, run_dir)
    except DiskFullError as err:
        result.summary_error = str(err)
        if exit_code == EXIT_OK:  # the run's outcome is lost with its summary: not a success
            result.exit_code = run_exit_code(internal=False, interrupted=None, preflight_failed=False,
                                             succeeded=False)
        logger.error("run %s finished: %s (exit code %d); the summary was NOT written: %s", opts.run_id, status,
                     result.exit_code, err)
        return result
    if opts.store:
        from evalchemy.store.record import record_run_end

        result.summary = record_run_end(opts.store, summary_path, summary)
    logger.info("run %s finished: %s (exit code %d); summary: %s", opts.run_id, status, exit_code, summary_path)
    return result



def _record_the_rest(plan: Plan, records: list[BenchmarkRecord], pre: Preflight | None,
                     interrupted: Interrupted | None, internal: BaseException | None, run_dir: Path) -> None:
    """A record for every benchmark of the plan that has none yet: skipped, or not run and why."""
    done = {r.name for r in records}
    for bench in plan.benchmarks:
        if bench.name in done:
            continue
        if bench.skip_reason:
            records.append(benchmark_record(bench, [], run_dir, None, ""))
            continue
        why = ("internal error" if internal else "run interrupted" if pre is not None else
               "interrupted during preflight" if interrupted else "preflight failed")
        records.append(BenchmarkRecord(name=bench.name, description=bench.description,
                                       status="skipped" if pre is None or interrupted else "failed",
                                       tasks=[t for run in bench.runs for t in run.tasks], priority=bench.priority,
                                       error="not run: " + why))


def _run_error(preflight_error: str | None, interrupted: Interrupted | None, internal: BaseException | None,
               disk_full: list[str], run_dir: Path) -> str | None:
    """The summary's ``error``: the preflight's, the interruption, a bug, or the disk that filled up."""
    if internal is not None:
        return f"internal error: {type(internal).__name__}: {internal}"
    error = preflight_error or (str(interrupted) if interrupted else None)
    if disk_full and not error:
        error = (f"disk full ({free_space(run_dir)} on the filesystem of {run_dir}): benchmark(s) "
                 f"{', '.join(disk_full)} could not be completed")
    return error


def _settings(opts: RunOptions, pre: Preflight | None) -> dict:
    return {
        "batch_size": opts.batch_size,
        "concurrency": pre.model_settings.num_concurrent if pre else opts.concurrency,
        "max_length": pre.model_settings.max_length if pre else opts.max_length,
        "request_timeout_s": opts.request_timeout,
        "max_retries": opts.max_retries,
        "max_failed_requests": opts.max_failed_requests,
        "gpu": opts.gpu,
    }


def _safe_display(url: str) -> str:
    try:
        return endpoint_mod.normalize(url).display
    except UsageError:
        return url
