"""The messages between the runner and the lm-eval worker process: one JSON line each way per job.

The runner writes a ``Job`` on the worker's stdin; the worker answers an ``Answer`` on a pipe of its own (the file
descriptor named by ``EVALCHEMY_RESULT_FD``). Both are plain JSON objects with exactly these fields, so a worker and
a runner of the same evalchemy version always agree, and a line that is not such an object is a ``ProtocolError``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

REQUEST_COUNT_NAMES = ("sent", "failed_attempts", "empty_answers", "truncated_prompts", "answers", "null_answers")


class ProtocolError(ValueError):
    """A line on the worker pipe that is not the message it should be."""


@dataclass(frozen=True)
class Job:
    """One lm-eval invocation: ``kwargs`` for ``lm_eval.simple_evaluate``, where its files and log go."""

    id: str  # "<benchmark>/<entry>"
    log_path: str  # the benchmark log the worker's output goes to
    output_path: str  # lm-eval's --output_path
    kwargs: dict  # simple_evaluate's keyword arguments (evalchemy.plan.simple_evaluate_kwargs)
    task_folders: tuple[str, ...]  # the folders of the restricted TaskManager
    credentials_free_base_url: str  # what lm-eval's saved config shows as base_url
    scores_dir: str | None = None  # where the per-question score files go

    def to_line(self) -> bytes:
        return (json.dumps({**asdict(self), "task_folders": list(self.task_folders)}) + "\n").encode()

    @classmethod
    def from_line(cls, line: str | bytes) -> Job:
        data = _object(line, cls)
        return cls(**{**data, "task_folders": tuple(data["task_folders"])})


@dataclass(frozen=True)
class Answer:
    """The worker's reply to one job. ``requests`` holds the REQUEST_COUNT_NAMES counts as they stood at its end."""

    id: str
    ok: bool
    error: str | None = None
    results: dict | None = None  # lm-eval's results, JSON-ready
    files: tuple[str, ...] = ()  # lm-eval's output files written by this job
    score_files: tuple[str, ...] = ()
    duration_s: float = 0.0
    requests: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # evalchemy.results.stats.sample_stats

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "files": list(self.files), "score_files": list(self.score_files)},
                          ensure_ascii=False)

    @classmethod
    def from_line(cls, line: str | bytes) -> Answer:
        data = _object(line, cls, optional={f.name for f in fields(cls)} - {"id", "ok"})
        return cls(**{**data, "files": tuple(data.get("files") or ()),
                      "score_files": tuple(data.get("score_files") or ()),
                      "requests": data.get("requests") or {}, "stats": data.get("stats") or {}})


def _object(line: str | bytes, cls: type, optional: set[str] | None = None) -> dict:
    """The JSON object on ``line`` with exactly ``cls``'s fields (those in ``optional`` may be missing)."""
    try:
        data = json.loads(line)
    except ValueError as err:
        raise ProtocolError(f"not a JSON {cls.__name__} line ({err}): {line[:80]!r}") from None
    names = {f.name for f in fields(cls)}
    optional = optional if optional is not None else {f.name for f in fields(cls) if f.name == "scores_dir"}
    if not isinstance(data, dict):
        raise ProtocolError(f"a {cls.__name__} is a JSON object, got {type(data).__name__}")
    missing, unknown = names - optional - set(data), set(data) - names
    if missing or unknown:
        raise ProtocolError(f"{cls.__name__} line: missing {sorted(missing)}, unknown {sorted(unknown)}")
    return data
