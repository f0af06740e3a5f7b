"""The summary's record of each benchmark: from its task runs' outcomes, or kept from an earlier attempt of the run."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from evalchemy.config.model import Config
from evalchemy.engines.lm_eval import scores as collect
from evalchemy.execution.pool import RunOutcome
from evalchemy.execution.preflight import Preflight
from evalchemy.execution.storage import DiskFullError, write_json_with_room
from evalchemy.plan import BenchmarkPlan, ModelSettings, lm_eval_argv, shell_line
from evalchemy.results import stats as stats_mod
from evalchemy.results.summary import REQUEST_COUNTS, BenchmarkRecord

logger = logging.getLogger(__name__)


def _relative(run_dir: Path, path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def benchmark_record(bench: BenchmarkPlan, outcomes: list[RunOutcome], run_dir: Path,
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
            if run.dataset.mode != "multiple_choice":
                entry["data"]["mode"] = run.dataset.mode
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


def kept_record(name: str, data: dict) -> BenchmarkRecord:
    fields = ("description", "status", "tasks", "priority", "metrics", "n_samples", "primary_metric", "duration_s",
              "files", "error", "runs", "accuracy", "subject_accuracy", "requests", "stats")
    return BenchmarkRecord(name=name, resumed=True, **{k: data[k] for k in fields if k in data})


def _public(settings: ModelSettings, public_url: str) -> ModelSettings:
    return replace(settings, base_url=public_url)

