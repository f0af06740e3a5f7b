"""A whole run: preflight, every benchmark of the plan through the worker, results files and the summary."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from evalchemy import redaction
from evalchemy.backends import openai_completions as endpoint_mod
from evalchemy.backends.base import Backend
from evalchemy.backends.registry import backend_for
from evalchemy.config.model import Config
from evalchemy.datasets.availability import check_plan_data
from evalchemy.errors import Interrupted, PreflightError, PreflightFindings
from evalchemy.execution import signals, storage
from evalchemy.execution.finish import finish
from evalchemy.execution.options import Events, RunOptions, RunResult  # noqa: F401 - part of this module's interface
from evalchemy.execution.pool import RunOutcome, WorkerProcess, run_benchmark, worker_env
from evalchemy.execution.preflight import Preflight, check_tasks, preflight  # noqa: F401 - part of this module's interface
from evalchemy.execution.records import benchmark_record, kept_record, previous_successes
from evalchemy.plan import Plan, request_cache_key
from evalchemy.results.summary import BenchmarkRecord, now_iso

logger = logging.getLogger(__name__)

from evalchemy.execution.runid import (  # noqa: E402,F401 - part of this module's interface
    GPU_PATTERN, RUN_ID_PATTERN, check_gpu, check_run_id, default_run_id)


@dataclass
class _Run:
    """What a run holds while it goes: the parts started, the records so far, and how it ended."""

    opts: RunOptions
    backend: Backend
    summary_path: Path
    records: list[BenchmarkRecord] = field(default_factory=list)
    pre: Preflight | None = None
    preflight_error: str | None = None
    interrupted: Interrupted | None = None
    internal: BaseException | None = None
    worker: WorkerProcess | None = None
    started: bool = False


def execute(opts: RunOptions, config: Config, plan: Plan, events: Events | None = None,
            api_key: str | None = None, index=None, other_secrets: tuple[str, ...] = ()) -> RunResult:
    """Run the plan. The caller has validated the config and attached the run log handlers. ``api_key`` and
    ``other_secrets`` (a notification password) are redacted from every log and searched for in every file of the
    run folder at the end."""
    events = events or Events()
    run_secrets = redaction.Redactor((api_key, *other_secrets))
    redaction.protect(api_key, *other_secrets)
    run_dir = opts.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    storage.reserve_summary_space(run_dir, storage.summary_space_estimate(
        len(plan.benchmarks), sum(len(b.runs) for b in plan.benchmarks)))
    started_at, t0 = now_iso(), time.monotonic()
    logger.info("run %s: config %s (sha256 %s), %d benchmark(s) to run", opts.run_id, config.path, config.sha256,
                len(plan.to_run))
    for warning in config.warnings:
        logger.warning("config: %s", warning)
    run = _Run(opts, backend_for(opts.endpoint, opts.backend), run_dir / f"evalchemy_summary_{opts.run_id}.json")
    scan: dict | None = None
    try:
        try:
            _preflight(run, config, plan, api_key, index, events)
            if run.pre is not None:
                _run_benchmarks(run, config, plan, api_key, events)
        except Interrupted as err:
            run.interrupted = err
            logger.error("run %s interrupted (%s): stopping the current benchmark", opts.run_id, err)
        except BaseException as err:  # a bug: the summary says so (exit code 1), then the CLI shows the traceback
            run.internal = err
            raise
    finally:
        # no signal raises here (see signals.py): the children are stopped and the summary written, always
        _stop_parts(run)
        if run_secrets:  # last, once nothing the run started writes there any more; also when the run raised
            scan = redaction.scan_run_folder(run_dir, run_secrets)
        result = finish(opts, config, plan, run.records, run.pre, run.preflight_error, run.interrupted, run.internal,
                        run.backend, run.summary_path, started_at, t0, scan)
    return result


def _preflight(run: _Run, config: Config, plan: Plan, api_key: str | None, index, events: Events) -> None:
    """Every preflight check (data, the backend started, the endpoint): ``run.pre`` set, or ``run.preflight_error``."""
    opts = run.opts
    try:
        with signals.interruptible():
            findings = PreflightFindings()
            findings.check(check_tasks, plan, run.backend)
            findings.check(check_plan_data, plan, index, opts.home or Path.cwd(), opts.online, config.path)
            url = findings.check(run.backend.start, opts.run_dir)
            run.started = url is not None
            if run.started:
                run.pre = preflight(replace(opts, endpoint=url), plan, api_key, backend=run.backend,
                                    findings=findings)
            findings.raise_any()
        events.preflight_done(run.pre.model, run.pre.tokenizer)
    except PreflightError as err:
        run.pre, run.preflight_error = None, events.words(err.message)
        logger.error("preflight failed, nothing was run: %s", run.preflight_error)


def _run_benchmarks(run: _Run, config: Config, plan: Plan, api_key: str | None, events: Events) -> None:
    """Every benchmark to run, in order (or spread over several endpoints); each record kept as it ends."""
    opts, pre, run_dir = run.opts, run.pre, run.opts.run_dir
    public_url = endpoint_mod.strip_credentials(pre.endpoint.completions_url)
    endpoint_id = run.backend.endpoint_id(public_url)
    kept = previous_successes(run.summary_path, config, pre, endpoint_id)
    cache = str(run_dir / ".request_cache" / request_cache_key(replace(pre.model_settings, base_url=endpoint_id)))
    run.worker = _new_worker(opts, api_key, run.backend)
    to_run = plan.to_run
    if opts.more_endpoints:
        _spread(opts, plan, api_key, pre, run.worker, kept, events, run.records, run_dir, cache)
        to_run = []
    for position, bench in enumerate(to_run, 1):
        events.benchmark_started(bench, position, len(to_run))
        if bench.name in kept:
            record = kept_record(bench.name, kept[bench.name])
            run.records.append(record)
            logger.info("[%d/%d] benchmark %s: kept from an earlier attempt of this run id", position,
                        len(to_run), bench.name)
            events.benchmark_done(record)
            continue
        logger.info("[%d/%d] benchmark %s", position, len(to_run), bench.name)
        outcomes: list[RunOutcome] = []
        try:
            with signals.interruptible():
                run_benchmark(run.worker, bench, pre.model_settings, run_dir, public_url, outcomes,
                              on_run_done=events.task_run_done, use_cache=cache,
                              max_failed_requests=opts.max_failed_requests)
        finally:  # signals are only recorded from here on: the finished work is always recorded
            record = benchmark_record(bench, outcomes, run_dir, pre.model_settings, public_url, cache)
            run.records.append(record)
        logger.info("[%d/%d] benchmark %s: %s", position, len(to_run), bench.name, record.status)
        events.benchmark_done(record)


def _new_worker(opts: RunOptions, api_key: str | None, backend: Backend | None = None) -> WorkerProcess:
    env = worker_env(opts.gpu, opts.log_level, api_key, online=opts.online, proxy=opts.proxy)
    return WorkerProcess({**env, **(backend.worker_env() if backend else {})}, opts.run_dir / ".worker.log",
                         cwd=opts.home, python=backend.worker_python() if backend else None)


def _stop_parts(run: _Run) -> None:
    """Stop the worker and the backend; drop the worker's boot log when it is empty."""
    if run.worker is not None:
        run.worker.stop()
    if run.started:
        run.backend.stop()
    worker_boot_log = run.opts.run_dir / ".worker.log"
    try:
        if worker_boot_log.exists() and worker_boot_log.stat().st_size == 0:
            worker_boot_log.unlink()
    except OSError:
        pass


def _spread(opts, plan, api_key, pre, worker, kept, events, records, run_dir, cache) -> None:
    from evalchemy.execution import spread

    findings = PreflightFindings()
    pres = [pre, *spread.extra_preflights(opts, plan, api_key, opts.more_endpoints, preflight,
                                          lambda: findings)]
    findings.raise_any()
    worker.stop()

    def run_one(bench_worker, bench_pre, bench):
        if bench.name in kept:
            return kept_record(bench.name, kept[bench.name])
        outcomes: list[RunOutcome] = []
        public = endpoint_mod.strip_credentials(bench_pre.endpoint.completions_url)
        try:
            run_benchmark(bench_worker, bench, bench_pre.model_settings, run_dir, public, outcomes,
                          use_cache=cache, max_failed_requests=opts.max_failed_requests)
        finally:
            record = benchmark_record(bench, outcomes, run_dir, bench_pre.model_settings, public, cache)
        return record

    spread.run_spread(opts, plan, api_key, pres, lambda: _new_worker(opts, api_key),
                      run_one, {k: kept_record(k, v) for k, v in kept.items()}, events, records)
