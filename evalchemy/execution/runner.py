"""A whole run: preflight, every benchmark of the plan through the worker, results files and the summary."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from evalchemy.backends import openai_completions as endpoint_mod
from evalchemy.backends.base import Backend
from evalchemy.backends.registry import backend_for
from evalchemy.engines.lm_eval import scores as collect
from evalchemy.config.model import Config
from evalchemy.datasets.availability import check_plan_data
from evalchemy import redaction
from evalchemy.execution import signals, storage
from evalchemy.backends import echo_check as echo
from evalchemy.errors import (
    EXIT_OK,
    Interrupted,
    PreflightError,
    PreflightFindings,
    UsageError,
    run_exit_code,
)
from evalchemy.execution.pool import RunOutcome, WorkerProcess, run_benchmark, worker_env
from evalchemy.plan import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_LENGTH,
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT_S,
    BenchmarkPlan,
    ModelSettings,
    Plan,
    format_model_args,
    lm_eval_argv,
    request_cache_key,
    shell_line,
)
from evalchemy.results import stats as stats_mod
from evalchemy.results.summary import REQUEST_COUNTS, BenchmarkRecord, build_summary, now_iso, run_status, versions
from evalchemy.proxy import display as proxy_display
from evalchemy.execution.storage import DiskFullError, free_space, is_disk_full, write_json_with_room

logger = logging.getLogger(__name__)

from evalchemy.execution.runid import (  # noqa: E402,F401 - part of this module's interface
    GPU_PATTERN, RUN_ID_PATTERN, check_gpu, check_run_id, default_run_id)


@dataclass(frozen=True)
class RunOptions:
    endpoint: str
    run_id: str
    output_dir: Path
    model: str | None = None
    tokenizer: str | None = None
    batch_size: int | None = None
    gpu: str | None = None
    max_length: int | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    request_timeout: int = DEFAULT_REQUEST_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    log_level: str = "INFO"
    max_failed_requests: int = 0
    online: bool = False  # let lm-eval download datasets and tokenizers from the hub
    home: Path | None = None  # relative dataset paths in task YAMLs are read from here (the project folder)
    proxy: str | None = field(default=None, repr=False)  # every request to the endpoint goes through this HTTP proxy
    store: str | None = None  # the results store's URL; the run records itself there at its end
    more_endpoints: tuple[str, ...] = ()  # the same model served elsewhere: benchmarks spread over all (spread.py)
    client: str = "evalchemy"  # "lm-eval": lm-eval's stock local-completions client instead of the lean one

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.run_id


@dataclass
class RunResult:
    summary: dict
    summary_path: Path
    exit_code: int
    records: list[BenchmarkRecord] = field(default_factory=list)
    disk_full: list[str] = field(default_factory=list)  # benchmarks that failed for lack of space
    summary_error: str | None = None  # set when the summary could not be written (disk full): nothing on disk


class Events:
    """Progress callbacks; the CLI subclasses this to draw progress. The default does nothing."""

    def preflight_done(self, model: str, tokenizer: endpoint_mod.TokenizerChoice) -> None: ...

    def benchmark_started(self, bench: BenchmarkPlan, position: int, total: int) -> None: ...

    def task_run_done(self, outcome: RunOutcome) -> None: ...

    def benchmark_done(self, record: BenchmarkRecord) -> None: ...


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


def _backend_record(backend: Backend, pre: Preflight | None) -> dict:
    """The summary's ``backend``: registry name, the lm-eval model the worker ran and its arguments (the URL as the
    summary's endpoint, without credentials)."""
    if pre is None:
        return {"name": backend.name, "lm_eval_model": None, "model_args": None}
    args = pre.model_settings.model_args()
    args["base_url"] = backend.endpoint_id(endpoint_mod.strip_credentials(str(args["base_url"])))
    return {"name": backend.name, "lm_eval_model": pre.model_settings.worker_model, "model_args": args}


def _relative(run_dir: Path, path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def _record(bench: BenchmarkPlan, outcomes: list[RunOutcome], run_dir: Path,
            model_settings: ModelSettings | None, public_url: str, use_cache: str | None = None) -> BenchmarkRecord:
    record = BenchmarkRecord(name=bench.name, description=bench.description, status="skipped",
                             tasks=[t for run in bench.runs for t in run.tasks] or [], priority=bench.priority)
    if bench.skip_reason:
        record.error = f"skipped: {bench.skip_reason}"
        return record
    statuses = {o.status for o in outcomes}
    if len(outcomes) < len(bench.runs):
        record.status = "failed"
    elif statuses == {"success"}:
        record.status = "success"
    elif "timeout" in statuses:
        record.status = "timeout"
    else:
        record.status = "failed"
    errors = [f"{o.run.entry}: {o.error}" for o in outcomes if o.error]
    record.error = "; ".join(errors) or (None if record.status == "success" else "not finished")
    record.duration_s = sum(o.duration_s for o in outcomes)
    record.requests = {key: sum(o.requests.get(key, 0) for o in outcomes) for key in REQUEST_COUNTS}
    scores = collect.benchmark_scores(outcomes)
    record.metrics = scores["metrics"]
    record.n_samples = scores["n_samples"]
    record.primary_metric = scores["primary_metric"]
    record.accuracy = scores["accuracy"]
    record.subject_accuracy = scores["subject_accuracy"]
    record.stats = stats_mod.benchmark_stats(outcomes, scores)
    log_path = run_dir / f"{bench.name}_benchmark.log"
    files = []
    merged = collect.merge_results(outcomes)
    if merged is not None:
        results_path = run_dir / f"{bench.name}_results.json"
        try:
            write_json_with_room(results_path, merged, run_dir)
            files.append(results_path.name)
        except DiskFullError as err:
            record.status, record.error = "failed", str(err)
            logger.error("benchmark %s: %s", bench.name, err)
    if log_path.exists():
        files.append(log_path.name)
    for outcome in outcomes:
        files.extend(_relative(run_dir, f) for f in outcome.files)
    record.files = files
    for outcome in outcomes:
        entry = {"entry": outcome.run.entry, "label": outcome.run.label, "tasks": list(outcome.run.tasks),
                 "status": outcome.status, "error": outcome.error, "duration_s": round(outcome.duration_s, 3),
                 "requests": {key: outcome.requests.get(key, 0) for key in REQUEST_COUNTS}}
        if model_settings is not None:
            argv = lm_eval_argv(outcome.run, _public(model_settings, public_url),
                                str(run_dir / outcome.run.output_dir), use_cache)
            entry["lm_eval_command"] = shell_line(argv)
        run = outcome.run
        if run.dataset is not None:
            entry["data"] = {"path": run.data_path, "subset": run.dataset.subset, "answers": run.dataset.answers}
        if run.hub_copies:
            entry["hub_copies"] = list(run.hub_copies)
        record.runs.append(entry)
    return record


def previous_successes(summary_path: Path, config: Config, pre: Preflight, endpoint: str) -> dict[str, dict]:
    """Benchmarks an earlier attempt of this run id finished successfully, with the same config, endpoint and model,
    and whose files are all still there: a resumed run keeps them instead of running them again."""
    try:
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    same = (previous.get("config", {}).get("sha256") == config.sha256 and previous.get("model") == pre.model
            and previous.get("endpoint") == endpoint)
    if not same:
        logger.warning("an earlier attempt of this run id used another config, endpoint or model: "
                       "every benchmark runs again")
        return {}
    kept = {}
    for name, bench in (previous.get("benchmarks") or {}).items():
        files = [summary_path.parent / f for f in bench.get("files", [])]
        if bench.get("status") == "success" and files and all(f.exists() for f in files):
            kept[name] = {**bench, "accuracy": previous.get("breakdown", {}).get("benchmark", {}).get(
                f"{name}_accuracy"), "subject_accuracy": previous.get("breakdown", {}).get("benchmark", {}).get(
                f"{name}_subject_accuracy", {})}
            kept[name]["stats"] = (previous.get("stats") or {}).get("benchmark", {}).get(name) or \
                stats_mod.stats_from_summary_entry(bench, kept[name]["accuracy"], kept[name]["subject_accuracy"])
    return kept


def _kept_record(name: str, data: dict) -> BenchmarkRecord:
    fields = ("description", "status", "tasks", "priority", "metrics", "n_samples", "primary_metric", "duration_s",
              "files", "error", "runs", "accuracy", "subject_accuracy", "requests", "stats")
    return BenchmarkRecord(name=name, resumed=True, **{k: data[k] for k in fields if k in data})


def _public(settings: ModelSettings, public_url: str) -> ModelSettings:
    return replace(settings, base_url=public_url)


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

    summary_path = run_dir / f"evalchemy_summary_{opts.run_id}.json"
    records: list[BenchmarkRecord] = []
    pre: Preflight | None = None
    preflight_error: str | None = None
    interrupted: Interrupted | None = None
    worker: WorkerProcess | None = None
    backend = backend_for(opts.endpoint)
    started = False
    scan: dict | None = None
    internal: BaseException | None = None
    result: RunResult | None = None
    try:
        try:
            with signals.interruptible():
                findings = PreflightFindings()
                findings.check(check_plan_data, plan, index, opts.home or Path.cwd(), opts.online, config.path)
                url = findings.check(backend.start, run_dir)
                started = url is not None
                if started:
                    pre = preflight(replace(opts, endpoint=url), plan, api_key, backend=backend, findings=findings)
                findings.raise_any()
            events.preflight_done(pre.model, pre.tokenizer)
        except PreflightError as err:
            preflight_error = str(err)
            logger.error("preflight failed, nothing was run: %s", err)
        if pre is not None:
            public_url = endpoint_mod.strip_credentials(pre.endpoint.completions_url)
            endpoint_id = backend.endpoint_id(public_url)
            kept = previous_successes(summary_path, config, pre, endpoint_id)
            cache = str(run_dir / ".request_cache" /
                        request_cache_key(replace(pre.model_settings, base_url=endpoint_id)))
            worker = WorkerProcess(worker_env(opts.gpu, opts.log_level, api_key, online=opts.online, proxy=opts.proxy),
                            run_dir / ".worker.log",
                            cwd=opts.home)
            to_run = plan.to_run
            if opts.more_endpoints:
                _spread(opts, plan, api_key, pre, worker, kept, events, records, run_dir, cache)
                to_run = []
            for position, bench in enumerate(to_run, 1):
                events.benchmark_started(bench, position, len(to_run))
                if bench.name in kept:
                    record = _kept_record(bench.name, kept[bench.name])
                    records.append(record)
                    logger.info("[%d/%d] benchmark %s: kept from an earlier attempt of this run id", position,
                                len(to_run), bench.name)
                    events.benchmark_done(record)
                    continue
                logger.info("[%d/%d] benchmark %s", position, len(to_run), bench.name)
                outcomes: list[RunOutcome] = []
                try:
                    with signals.interruptible():
                        run_benchmark(worker, bench, pre.model_settings, run_dir, public_url, outcomes,
                                      on_run_done=events.task_run_done, use_cache=cache,
                                      max_failed_requests=opts.max_failed_requests)
                finally:  # signals are only recorded from here on: the finished work is always recorded
                    record = _record(bench, outcomes, run_dir, pre.model_settings, public_url, cache)
                    records.append(record)
                logger.info("[%d/%d] benchmark %s: %s", position, len(to_run), bench.name, record.status)
                events.benchmark_done(record)
    except Interrupted as err:
        interrupted = err
        logger.error("run %s interrupted (%s): stopping the current benchmark", opts.run_id, err)
    except BaseException as err:  # a bug: the summary says so (exit code 1), then the CLI shows the traceback
        internal = err
        raise
    finally:
        # no signal raises here (see signals.py): the children are stopped and the summary written, always
        if worker is not None:
            worker.stop()
        if started:
            backend.stop()
        worker_boot_log = run_dir / ".worker.log"
        try:
            if worker_boot_log.exists() and worker_boot_log.stat().st_size == 0:
                worker_boot_log.unlink()
        except OSError:
            pass
        if run_secrets:  # last, once nothing the run started writes there any more; also when the run raised
            scan = redaction.scan_run_folder(run_dir, run_secrets)
        result = _finish(opts, config, plan, records, pre, preflight_error, interrupted, internal, backend,
                         summary_path, started_at, t0, scan)
    return result


def _finish(opts: RunOptions, config: Config, plan: Plan, records: list[BenchmarkRecord], pre: Preflight | None,
            preflight_error: str | None, interrupted: Interrupted | None, internal: BaseException | None,
            backend: Backend, summary_path: Path, started_at: str, t0: float, scan: dict | None = None) -> RunResult:
    """Complete the records, pick the exit code and write the summary (kept in memory until then)."""
    run_dir = opts.run_dir
    done = {r.name for r in records}
    for bench in plan.benchmarks:
        if bench.name in done:
            continue
        if bench.skip_reason:
            records.append(_record(bench, [], run_dir, None, ""))
        else:
            record = BenchmarkRecord(name=bench.name, description=bench.description,
                                     status="skipped" if pre is None or interrupted else "failed",
                                     tasks=[t for run in bench.runs for t in run.tasks], priority=bench.priority,
                                     error="not run: " + ("internal error" if internal else
                                                          "run interrupted" if pre is not None else
                                                          "interrupted during preflight" if interrupted else
                                                          "preflight failed"))
            records.append(record)

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
    error = preflight_error or (str(interrupted) if interrupted else None)
    if internal is not None:
        error = f"internal error: {type(internal).__name__}: {internal}"
    elif disk_full and not error:
        error = (f"disk full ({free_space(run_dir)} on the filesystem of {run_dir}): benchmark(s) "
                 f"{', '.join(disk_full)} could not be completed")
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
        settings={
            "batch_size": opts.batch_size,
            "concurrency": pre.model_settings.num_concurrent if pre else opts.concurrency,
            "max_length": pre.model_settings.max_length if pre else opts.max_length,
            "request_timeout_s": opts.request_timeout,
            "max_retries": opts.max_retries,
            "max_failed_requests": opts.max_failed_requests,
            "gpu": opts.gpu,
        },
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
    summary = redaction.scrub_data(summary)
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


def _spread(opts, plan, api_key, pre, worker, kept, events, records, run_dir, cache) -> None:
    from evalchemy.execution import spread

    findings = PreflightFindings()
    pres = [pre, *spread.extra_preflights(opts, plan, api_key, opts.more_endpoints, preflight,
                                          lambda: findings)]
    findings.raise_any()
    worker.stop()

    def run_one(bench_worker, bench_pre, bench):
        if bench.name in kept:
            return _kept_record(bench.name, kept[bench.name])
        outcomes: list[RunOutcome] = []
        public = endpoint_mod.strip_credentials(bench_pre.endpoint.completions_url)
        try:
            run_benchmark(bench_worker, bench, bench_pre.model_settings, run_dir, public, outcomes,
                          use_cache=cache, max_failed_requests=opts.max_failed_requests)
        finally:
            record = _record(bench, outcomes, run_dir, bench_pre.model_settings, public, cache)
        return record

    spread.run_spread(opts, plan, api_key, pres,
                      lambda: WorkerProcess(worker_env(opts.gpu, opts.log_level, api_key, online=opts.online,
                                                proxy=opts.proxy), run_dir / ".worker.log", cwd=opts.home),
                      run_one, {k: _kept_record(k, v) for k, v in kept.items()}, events, records)


def _safe_display(url: str) -> str:
    try:
        return endpoint_mod.normalize(url).display
    except UsageError:
        return url
