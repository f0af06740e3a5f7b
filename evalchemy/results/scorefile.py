"""The compact per-question score file: ``<run folder>/scores/<benchmark>/<lm-eval task>.jsonl``.

Written by the worker for every task of every run (whether or not the config logs lm-eval's samples), read by
the store. One JSON line per question, a few bytes each::

    {"doc_id": 0, "doc_hash": "…", "prompt_hash": "…", "metrics": {"acc": 1.0}, "target": "0", "prediction": "0"}

``metrics`` uses the summary's metric labels (``acc``, or ``exact_match,strict-match`` for a filter other than
``none``); only numeric per-question values are kept. ``prediction`` is the picked choice's index for multiple
choice (the highest log-likelihood), else the filtered answer text, cut to ``TEXT_LIMIT`` characters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SCORES_FOLDER = "scores"
TEXT_LIMIT = 80


def scores_dir(run_dir: Path, benchmark: str) -> Path:
    """The folder of a benchmark's score files in a run folder (the one place that names it)."""
    return Path(run_dir) / SCORES_FOLDER / benchmark


def score_path(run_dir: Path, benchmark: str, task: str) -> Path:
    return scores_dir(run_dir, benchmark) / f"{task}.jsonl"


def _short(value) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text[:TEXT_LIMIT]


def _prediction(filtered: list):
    """Multiple choice: one (log-likelihood, is_greedy) per choice, the answer is the likeliest choice's index."""
    if filtered and all(isinstance(r, (list, tuple)) and r and isinstance(r[0], (int, float)) for r in filtered):
        values = [float(r[0]) for r in filtered]
        return str(values.index(max(values))) if len(values) > 1 else _short(filtered[0])
    if len(filtered) == 1:
        return _short(filtered[0])
    return _short(filtered)


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is not a score


def compact_rows(samples: list[dict]) -> list[dict]:
    """lm-eval's logged samples of one task (one per question and filter) -> one compact row per question."""
    rows: dict[object, dict] = {}
    for sample in samples:
        doc_id = sample.get("doc_id")
        row = rows.setdefault(doc_id, {"doc_id": doc_id, "doc_hash": sample.get("doc_hash"),
                                       "prompt_hash": sample.get("prompt_hash"), "metrics": {},
                                       "target": _short(sample.get("target")), "prediction": None})
        flt = sample.get("filter") or "none"
        for name in sample.get("metrics") or ():
            value = _number(sample.get(name))
            if value is not None:
                row["metrics"][name if flt == "none" else f"{name},{flt}"] = value
        if row["prediction"] is None or flt == "none":
            row["prediction"] = _prediction(sample.get("filtered_resps") or [])
    return sorted(rows.values(), key=lambda r: (str(type(r["doc_id"])), r["doc_id"]))


def write_score_files(folder: Path, samples: dict[str, list[dict]], tasks: list[str]) -> list[str]:
    """Write one score file per task of ``tasks`` that has samples; returns the paths written."""
    written = []
    for task in tasks:
        if task not in samples:
            continue
        path = Path(folder) / f"{task}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in compact_rows(samples[task]):
                handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
        written.append(str(path))
    return written


def read_score_file(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
