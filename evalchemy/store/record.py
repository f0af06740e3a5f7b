"""Recording runs: a run folder (its summary, results files and score files) -> rows in the store.

The summary file is the source of truth: the run records itself at its end through ``record_run_end``, and
``store import`` replays any run folder later with ``import_dirs``. Recording a run id again replaces its rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

from evalchemy.engines.lm_eval.scores import primary_metric
from evalchemy.errors import StoreError
from evalchemy.results.scorefile import SCORES_FOLDER, read_score_file, scores_dir
from evalchemy.results.summary import READABLE_VERSIONS, write_json_atomic
from evalchemy.store import db, schema

logger = logging.getLogger(__name__)

SUMMARY_GLOB = "evalchemy_summary_*.json"
SECRET_KEY = re.compile(r"(api[_-]?key|secret|password|passwd|authorization|(^|_)token$|^headers?$)", re.I)
LOCAL_ENDPOINT = "local"


@dataclass
class RunRows:
    """Everything one run puts in the store."""

    run: dict
    benchmarks: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)
    subjects: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)


def utc(timestamp: str | None) -> str | None:
    """An ISO 8601 time as UTC (``2026-11-23T20:27:12+00:00``), so times from every host sort as text."""
    if not timestamp:
        return None
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return timestamp
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def scrub(value):
    """Drop anything in a config that looks like a credential (API keys, tokens, passwords, headers)."""
    if isinstance(value, dict):
        return {k: "(removed)" if SECRET_KEY.search(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def json_safe(value):
    """NaN and infinities become null: PostgreSQL's JSON refuses them."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def _data_files(config: dict) -> list[Path]:
    files = ((config.get("dataset_kwargs") or {}).get("data_files")) or {}
    found = files.values() if isinstance(files, dict) else files if isinstance(files, list) else [files]
    paths = []
    for item in found:
        for one in item if isinstance(item, list) else [item]:
            if isinstance(one, str) and Path(one).is_file():
                paths.append(Path(one))
    return sorted(paths)


def _data_sha256(config: dict, run_entry: dict | None) -> str | None:
    """sha256 over the task's local data files (those named in its config, or the local dataset folder)."""
    paths = _data_files(config)
    data = (run_entry or {}).get("data") or {}
    if not paths and data.get("path") and Path(data["path"]).exists():
        root = Path(data["path"])
        paths = sorted(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def task_config_sha256(config: dict) -> str:
    """The task's lm-eval config, less where its data and YAML lie on this machine (``data_sha256`` says what the
    data holds)."""
    kept = {k: v for k, v in config.items() if k != "dataset_kwargs"}
    if isinstance(kept.get("metadata"), dict):
        kept["metadata"] = {k: v for k, v in kept["metadata"].items() if k != "config_source"}
    return _sha256_json(kept)


def _leaves(task: str, groups: dict) -> list[str]:
    if task in groups:
        return [leaf for sub in groups[task] for leaf in _leaves(sub, groups)]
    return [task]


def subject_labels(bench: dict, results: dict) -> dict[str, str]:
    """lm-eval task -> subject label, as the summary's breakdown names them: a config entry's label when it scored
    one task, else the task's name."""
    groups = results.get("group_subtasks") or {}
    counted = set(bench.get("n_samples") or {})
    labels: dict[str, str] = {}
    for entry in bench.get("runs") or []:
        leaves = [t for task in entry.get("tasks") or [] for t in _leaves(task, groups) if t in counted]
        for task in leaves:
            labels[task] = entry["label"] if len(leaves) == 1 else task
    for task in counted:
        labels.setdefault(task, task)
    return labels


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _config_content(summary: dict) -> dict | None:
    config = summary.get("config") or {}
    path = Path(config.get("path") or "")
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != config.get("sha256"):
        return None  # changed since the run: not the config it ran
    try:
        return scrub(json.loads(raw.decode("utf-8")))
    except ValueError:
        return None


def build_rows(run_dir: Path, summary: dict) -> RunRows:
    run_dir = Path(run_dir)
    versions = summary.get("versions") or {}
    run_id = summary["run_id"]
    seed = None
    rows = RunRows(run={})
    for name, bench in (summary.get("benchmarks") or {}).items():
        results = _read_json(run_dir / f"{name}_results.json") if f"{name}_results.json" in bench.get("files", []) \
            else {}
        if seed is None and isinstance(results.get("config"), dict):
            seed = {k: v for k, v in results["config"].items() if k.endswith("_seed")} or None
        metrics = bench.get("metrics") or {}
        counts = bench.get("n_samples") or {}
        primary = bench.get("primary_metric")
        labels = subject_labels(bench, results)
        entries = {t: e for e in bench.get("runs") or [] for t in e.get("tasks") or []}
        primary_labels: dict[str, str] = {}
        for task, task_metrics in metrics.items():
            config = (results.get("configs") or {}).get(task) or {}
            key = {
                "task_config_sha256": task_config_sha256(config) if config else None,
                "num_fewshot": (results.get("n-shot") or {}).get(task),
                "sample_limit": (results.get("config") or {}).get("limit"),
                "lm_eval_version": results.get("lm_eval_version") or versions.get("lm_eval"),
                "data_sha256": _data_sha256(config, entries.get(task)) if config else None,
            }
            better = (results.get("higher_is_better") or {}).get(task) or {}
            for label, value in task_metrics.items():
                rows.scores.append({"run_id": run_id, "benchmark": name, "task": task, "metric": label,
                                    "value": value["value"], "stderr": value.get("stderr"), "n": counts.get(task),
                                    "higher_is_better": better.get(label.split(",")[0]), **key})
            label = primary_metric(task_metrics, (primary,) if primary else ())
            if label is not None and task in counts:
                primary_labels[task] = label
                rows.subjects.append({"run_id": run_id, "benchmark": name, "subject": labels.get(task, task),
                                      "task": task, "metric": label, "value": task_metrics[label]["value"],
                                      "stderr": task_metrics[label].get("stderr"), "n": counts[task]})
        accuracy = (summary.get("breakdown") or {}).get("benchmark", {}).get(f"{name}_accuracy")
        rows.benchmarks.append({"run_id": run_id, "benchmark": name, "status": bench.get("status"),
                                "error": bench.get("error"), "metric": primary, "value": accuracy,
                                "n": sum(counts.get(t, 0) for t in primary_labels) or None})
        rows.samples.extend(_sample_rows(run_id, name, scores_dir(run_dir, name), primary_labels, labels))
    rows.run = _run_row(run_dir, summary, versions, seed)
    return rows


def _sample_rows(run_id: str, name: str, folder: Path, primary_labels: dict[str, str], labels: dict) -> list[dict]:
    """One row per scored question, from the benchmark's score files."""
    samples = []
    for task in sorted(primary_labels):
        path = folder / f"{task}.jsonl"
        if not path.is_file():
            continue
        for item in read_score_file(path):
            values = item.get("metrics") or {}
            samples.append({
                "run_id": run_id, "benchmark": name, "task": task, "doc_id": str(item.get("doc_id")),
                "doc_hash": item.get("doc_hash"), "prompt_hash": item.get("prompt_hash"),
                "subject": labels.get(task, task), "target": item.get("target"),
                "prediction": item.get("prediction"), "correct": values.get(primary_labels[task]),
                "metrics": json_safe(values)})
    return samples


def _run_row(run_dir: Path, summary: dict, versions: dict, seed: dict | None) -> dict:
    return {
        "run_id": summary["run_id"], "status": summary.get("status"), "exit_code": summary.get("exit_code"),
        "error": summary.get("error"), "started_at": utc(summary.get("started_at")),
        "finished_at": utc(summary.get("finished_at")), "duration_s": summary.get("duration_s"),
        "host": summary.get("host"), "endpoint": summary.get("endpoint"), "model": summary.get("model"),
        "backend": backend_name(summary),
        "config_path": (summary.get("config") or {}).get("path"),
        "config_sha256": (summary.get("config") or {}).get("sha256"), "config": _config_content(summary),
        "versions": versions, "seed": json_safe(seed), "summary": json_safe(summary),
        "run_dir": str(run_dir.resolve()),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def backend_name(summary: dict) -> str:
    """The backend's registry name: from the summary's ``backend`` record, or for summaries written before it
    existed, the one its endpoint implies (the embedded model's is recorded as "local")."""
    recorded = summary.get("backend")
    if isinstance(recorded, dict) and isinstance(recorded.get("name"), str):
        return recorded["name"]
    return "local" if summary.get("endpoint") == LOCAL_ENDPOINT else "vllm-server"


def write_rows(engine: sa.Engine, rows: RunRows) -> None:
    """Replace the run id's record with ``rows`` in one transaction."""
    run_id = rows.run["run_id"]
    with engine.begin() as connection:
        for table in schema.CHILD_TABLES:
            connection.execute(sa.delete(table).where(table.c.run_id == run_id))
        connection.execute(sa.delete(schema.runs).where(schema.runs.c.run_id == run_id))
        connection.execute(sa.insert(schema.runs), [rows.run])
        for table, items in ((schema.benchmarks, rows.benchmarks), (schema.scores, rows.scores),
                             (schema.subjects, rows.subjects), (schema.samples, rows.samples)):
            if items:
                connection.execute(sa.insert(table), items)


def open_for_writing(url: str) -> sa.Engine:
    """An engine on the store with its schema at the head revision. Two runs that create the same new store at
    once race on the first revision: the loser tries again once the winner has committed."""
    engine = db.open_engine(url)
    for attempt in (1, 2):
        try:
            db.upgrade(engine)
            return engine
        except sa.exc.SQLAlchemyError as err:
            racing = isinstance(err, sa.exc.IntegrityError) or "already exists" in str(err)
            if attempt == 2 or not racing:
                engine.dispose()
                raise db.unreachable(url, err) from None
            time.sleep(1.0)
    return engine


def record_run(url: str, run_dir: Path, summary: dict) -> None:
    engine = open_for_writing(url)
    try:
        write_rows(engine, build_rows(run_dir, summary))
    except sa.exc.SQLAlchemyError as err:
        raise db.unreachable(url, err) from None
    finally:
        engine.dispose()


def record_run_end(url: str, summary_path: Path, summary: dict) -> dict:
    """At the end of a run: record it. A store that fails is a warning (errors log) and ``store`` in the summary,
    rewritten; the run's result and exit code stay as they are. Returns the summary as written."""
    try:
        record_run(url, summary_path.parent, summary)
    except Exception as err:  # noqa: BLE001 - the summary keeps the result; `store import` replays it
        reason = str(err) if isinstance(err, StoreError) else f"{type(err).__name__}: {err}"
        logger.warning("results store: not recorded (%s); the summary keeps every result: record it later with "
                       "`evalchemy store import %s`", reason, summary_path.parent)
        summary = {**summary, "store": {"status": "failed", "reason": reason}}
        try:
            write_json_atomic(summary_path, summary)
        except OSError as write_err:  # e.g. the disk that failed the store: the summary on disk stands
            logger.warning("results store: the summary could not note the failure (%s)", write_err)
    return summary


@dataclass
class Imported:
    run_id: str
    run_dir: Path
    status: str


def find_summaries(folders: list[Path]) -> list[Path]:
    """Summary files in run folders, or in the run folders of output folders."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise StoreError(f"{folder}: not a folder; pass run folders or an output folder such as results")
        here = sorted(folder.glob(SUMMARY_GLOB)) or sorted(folder.glob(f"*/{SUMMARY_GLOB}"))
        here = [p for p in here if SCORES_FOLDER not in p.parts]
        if not here:
            raise StoreError(f"{folder}: no {SUMMARY_GLOB} in it or in its sub-folders")
        found.extend(here)
    return found


def _end_queued(engine: sa.Engine, summary: dict) -> None:
    """A queued run whose worker could not record its end (the store was down) ends with its import."""
    exit_code = summary.get("exit_code")
    state = "SUCCESS" if exit_code == 0 else "FAILURE"
    with engine.begin() as connection:
        connection.execute(sa.update(schema.queue_runs).where(
            schema.queue_runs.c.run_id == summary["run_id"], schema.queue_runs.c.state == "STARTED").values(
            state=state, status=summary.get("status"), exit_code=exit_code, finished_at=utc(summary.get("finished_at"))))


def import_dirs(url: str, folders: list[Path]) -> list[Imported]:
    summaries = find_summaries(folders)
    engine = open_for_writing(url)
    done = []
    try:
        for path in summaries:
            summary = _read_json(path)
            if not summary.get("run_id") or summary.get("schema_version") not in READABLE_VERSIONS:
                raise StoreError(f"{path}: not an evalchemy summary (schema_version "
                                 f"{' or '.join(map(str, READABLE_VERSIONS))})")
            write_rows(engine, build_rows(path.parent, summary))
            _end_queued(engine, summary)
            done.append(Imported(summary["run_id"], path.parent, summary.get("status")))
    except sa.exc.SQLAlchemyError as err:
        raise db.unreachable(url, err) from None
    finally:
        engine.dispose()
    return done
