"""Turn lm-eval's results into a benchmark's results file, its metrics, and the summary's breakdown."""

from __future__ import annotations

import logging
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class RunOutcome(Protocol):
    """What scoring reads of one lm-eval invocation (execution.pool.RunOutcome has it; the engine does not import
    the executor)."""

    run: Any
    status: str
    results: dict | None

PRIMARY_METRICS = ("acc", "exact_match", "acc_norm", "f1", "mcc", "bleu", "rouge1", "word_perplexity")
_MERGED_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples", "task_hashes")


def merge_results(outcomes: list[RunOutcome]) -> dict | None:
    """One lm-eval-shaped results document for a benchmark from its successful invocations."""
    done = [o.results for o in outcomes if o.status == "success" and o.results]
    if not done:
        return None
    if len(done) == 1:
        return done[0]
    merged: dict = {key: {} for key in _MERGED_KEYS}
    for results in done:
        for key in _MERGED_KEYS:
            merged[key].update(results.get(key) or {})
    first = done[0]
    for key, value in first.items():
        if key not in merged:
            merged[key] = value
    merged["total_evaluation_time_seconds"] = str(
        sum(float(r.get("total_evaluation_time_seconds") or 0) for r in done)
    )
    return merged


def _split_metric(key: str) -> tuple[str, str]:
    name, _, flt = key.partition(",")
    return name, flt or "none"


def task_metrics(entry: dict, wanted: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{"acc": {"value": .., "stderr": ..}, "exact_match,strict-match": {...}}`` from one lm-eval results entry."""
    metrics: dict[str, dict] = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        name, flt = _split_metric(key)
        if wanted and name not in wanted:
            continue
        stderr = entry.get(f"{name}_stderr,{flt}")
        label = name if flt == "none" else f"{name},{flt}"
        metrics[label] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
    return metrics


def primary_metric(metrics: dict[str, dict], preferred: tuple[str, ...] = ()) -> str | None:
    for name in (*preferred, *PRIMARY_METRICS):
        if name in metrics:
            return name
        for label in metrics:
            if label.split(",")[0] == name:
                return label
    return next(iter(sorted(metrics)), None)


def n_samples(results: dict, task: str) -> int | None:
    entry = (results.get("n-samples") or {}).get(task)
    if isinstance(entry, dict):
        return entry.get("effective", entry.get("original"))
    return None


def leaf_tasks(results: dict) -> list[str]:
    """Tasks that scored samples themselves (not groups, whose scores aggregate them)."""
    groups = set(results.get("groups") or {})
    counted = results.get("n-samples") or {}
    return [t for t in (results.get("results") or {}) if t in counted and t not in groups]


def benchmark_scores(outcomes: list[RunOutcome]) -> dict:
    """Per-task metrics of a benchmark plus its accuracy and per-subject accuracy (the breakdown).

    Returns {"metrics": {task: {...}}, "n_samples": {task: n}, "primary_metric": str | None,
             "accuracy": float | None, "subject_accuracy": {label: float}}.
    """
    metrics: dict[str, dict] = {}
    counts: dict[str, int] = {}
    subjects: dict[str, float] = {}
    weighted: list[tuple[float, int]] = []
    primary_name = None
    for outcome in outcomes:
        if outcome.status != "success" or not outcome.results:
            continue
        results = outcome.results
        wanted = outcome.run.metrics
        for task, entry in (results.get("results") or {}).items():
            found = task_metrics(entry, wanted)
            if wanted:
                missing = [m for m in wanted if not any(label.split(",")[0] == m for label in found)]
                if missing and task in (results.get("n-samples") or {}):
                    logger.warning("tasks.%s.metrics: %s not produced by %s (it produced: %s)", outcome.run.entry,
                                   ", ".join(missing), task, ", ".join(sorted(task_metrics(entry))) or "nothing")
            metrics[task] = found
            count = n_samples(results, task)
            if count is not None:
                counts[task] = count
        leaves = leaf_tasks(results)
        for task in leaves:
            name = primary_metric(metrics[task], wanted)
            if name is None:
                continue
            primary_name = primary_name or name
            value = metrics[task][name]["value"]
            label = outcome.run.label if len(leaves) == 1 else task
            subjects[label] = value
            weighted.append((value, counts[task]))
    total = sum(n for _, n in weighted)
    accuracy = sum(v * n for v, n in weighted) / total if total else None
    return {
        "metrics": metrics,
        "n_samples": counts,
        "primary_metric": primary_name.split(",")[0] if primary_name else None,
        "accuracy": accuracy,
        "subject_accuracy": subjects,
    }
