"""The run summary (``evalchemy_summary_<run_id>.json``): a versioned format, written atomically.

Format: ``evalchemy/schemas/summary.schema.json`` (schema_version 2; version 1 had no ``stats``). Volatile fields
(``started_at``, ``finished_at``, ``duration_s``, ``host``, ``pid``) are the only ones that change between identical
runs.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from evalchemy import atomic
from evalchemy.results.stats import METHOD as STATS_METHOD

SCHEMA_VERSION = 2  # 2: the stats layer; readers accept 1 (no stats)
READABLE_VERSIONS = (1, 2)
RUN_STATUSES = ("success", "partial", "failed", "interrupted")
BENCHMARK_STATUSES = ("success", "failed", "timeout", "skipped")
REQUEST_COUNTS = ("sent", "failed_attempts", "empty_answers", "truncated_prompts")


def write_json_atomic(path: Path, data: object) -> None:
    """Readers see the old or the new file, and the new one survives a crash (``atomic.write_json``)."""
    atomic.write_json(path, data)


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


@dataclass
class BenchmarkRecord:
    name: str
    description: str
    status: str
    tasks: list[str]
    priority: str
    metrics: dict = field(default_factory=dict)
    n_samples: dict = field(default_factory=dict)
    primary_metric: str | None = None
    accuracy: float | None = None
    subject_accuracy: dict = field(default_factory=dict)
    duration_s: float = 0.0
    files: list[str] = field(default_factory=list)
    error: str | None = None
    runs: list[dict] = field(default_factory=list)
    resumed: bool = False  # kept from an earlier attempt of the same run id
    requests: dict = field(default_factory=lambda: dict.fromkeys(REQUEST_COUNTS, 0))
    stats: dict | None = None  # this benchmark's entry of the summary's stats layer (evalchemy.results.stats)

    def to_json(self) -> dict:
        return {
            "resumed": self.resumed,
            "requests": self.requests,
            "description": self.description,
            "status": self.status,
            "tasks": self.tasks,
            "priority": self.priority,
            "metrics": self.metrics,
            "n_samples": self.n_samples,
            "primary_metric": self.primary_metric,
            "duration_s": round(self.duration_s, 3),
            "files": self.files,
            "error": self.error,
            "runs": self.runs,
        }


def run_status(records: list[BenchmarkRecord], interrupted: bool, preflight_error: str | None) -> str:
    if interrupted:
        return "interrupted"
    if preflight_error:
        return "failed"
    ran = [r for r in records if r.status != "skipped"]
    ok = [r for r in ran if r.status == "success"]
    if ran and len(ok) == len(ran):
        return "success"
    if not ok:
        return "failed"
    return "partial"


def build_summary(*, run_id: str, status: str, exit_code: int, started_at: str, finished_at: str,
                  duration_s: float, endpoint: str | None, model: str | None, tokenizer: dict | None,
                  config_path: str, config_sha256: str, settings: dict, versions: dict,
                  records: list[BenchmarkRecord], files: dict, error: str | None,
                  secrets: dict | None = None, backend: dict | None = None) -> dict:
    counts = {s: sum(1 for r in records if r.status == s) for s in BENCHMARK_STATUSES}
    breakdown: dict[str, object] = {}
    stats: dict[str, object] = {}
    for record in records:
        if record.status == "success" and record.accuracy is not None:
            breakdown[f"{record.name}_accuracy"] = record.accuracy
            if len(record.subject_accuracy) > 1:
                breakdown[f"{record.name}_subject_accuracy"] = record.subject_accuracy
            if record.stats is not None:
                stats[record.name] = record.stats
    summary = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "status": status,
        "exit_code": exit_code,
        "error": error,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": round(duration_s, 3),
        "endpoint": endpoint,
        "model": model,
        "tokenizer": tokenizer,
        "config": {"path": config_path, "sha256": config_sha256},
        "settings": settings,
        "versions": versions,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "counts": {"benchmarks": len(records), **counts},
        "benchmarks": {r.name: r.to_json() for r in records},
        "order": [r.name for r in records if r.status != "skipped"],
        "breakdown": {"benchmark": breakdown},
        "stats": {"benchmark": stats, "method": STATS_METHOD},
        "files": files,
    }
    if secrets is not None:  # the end-of-run scan for the API key: present when the run had one
        summary["secrets"] = secrets
    if backend is not None:  # how the model was reached: registry name, lm-eval model and its arguments
        summary["backend"] = backend
    return summary


def versions() -> dict:
    from importlib import metadata

    from evalchemy import __version__

    try:
        lm_eval_version = metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        lm_eval_version = None
    return {"evalchemy": __version__, "lm_eval": lm_eval_version, "python": platform.python_version()}
