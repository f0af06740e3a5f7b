"""Reading the store: one run's scores (for compare), the leaderboard and a model's history. Read-only."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import sqlalchemy as sa

from evalchemy.errors import NotInStore
from evalchemy.store import db, schema


@contextlib.contextmanager
def reader(url: str):
    """A read-only connection to the store (SQLite ``mode=ro``; a read-only PostgreSQL transaction)."""
    engine = db.open_engine(url, readonly=True)
    try:
        try:
            connection = engine.connect()
        except sa.exc.SQLAlchemyError as err:
            raise db.unreachable(url, err) from None
        with connection:
            try:
                db.check_readable(connection, url)
                yield connection
            except sa.exc.SQLAlchemyError as err:
                raise db.unreachable(url, err) from None
    finally:
        engine.dispose()


@dataclass
class RunData:
    """One run as compare needs it."""

    run_id: str
    model: str | None
    status: str
    finished_at: str | None
    benchmarks: dict[str, dict] = field(default_factory=dict)  # name -> row of the benchmarks table
    backend: str | None = None
    scores: list[dict] = field(default_factory=list)
    subjects: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)


def _rows(connection: sa.Connection, table: sa.Table, run_id: str) -> list[dict]:
    query = sa.select(table).where(table.c.run_id == run_id)
    return [dict(r._mapping) for r in connection.execute(query)]


def load_run(connection: sa.Connection, run_id: str, url: str) -> RunData:
    run = connection.execute(sa.select(schema.runs.c.run_id, schema.runs.c.model, schema.runs.c.status,
                                       schema.runs.c.finished_at, schema.runs.c.backend)
                             .where(schema.runs.c.run_id == run_id)).first()
    if run is None:
        raise NotInStore(f"run {run_id!r} is not in the store {db.display(url)}", "run")
    return RunData(run_id=run.run_id, model=run.model, status=run.status, finished_at=run.finished_at,
                   backend=run.backend,
                   benchmarks={r["benchmark"]: r for r in _rows(connection, schema.benchmarks, run_id)},
                   scores=_rows(connection, schema.scores, run_id),
                   subjects=_rows(connection, schema.subjects, run_id),
                   samples=_rows(connection, schema.samples, run_id))


def combined_stderr(parts: list[tuple[int | None, float | None]]) -> float | None:
    """Standard error of a sample-weighted mean of independent parts, each (n, stderr)."""
    if not parts or any(n is None or se is None for n, se in parts):
        return None
    total = sum(n for n, _ in parts)
    if not total:
        return None
    return math.sqrt(sum((n / total) ** 2 * se ** 2 for n, se in parts))


@dataclass
class LeaderRow:
    model: str | None
    benchmark: str
    subject: str | None
    metric: str | None
    value: float
    stderr: float | None
    n: int | None
    run_id: str
    finished_at: str | None


def _chosen_runs(connection: sa.Connection, since: str | None, all_runs: bool) -> list[sa.Row]:
    runs = schema.runs
    where = [runs.c.finished_at >= since] if since else []
    if all_runs:
        query = sa.select(runs.c.run_id, runs.c.model, runs.c.finished_at).where(*where)
    else:
        ranked = sa.select(
            runs.c.run_id, runs.c.model, runs.c.finished_at,
            sa.func.row_number().over(partition_by=runs.c.model,
                                      order_by=(runs.c.finished_at.desc(), runs.c.run_id.desc())).label("rank"),
        ).where(runs.c.status == "success", *where).subquery()
        query = sa.select(ranked.c.run_id, ranked.c.model, ranked.c.finished_at).where(ranked.c.rank == 1)
    return list(connection.execute(query))


def leaderboard(connection: sa.Connection, *, benchmark: str | None = None, subject: str | None = None,
                by_subject: bool = False, since: str | None = None, all_runs: bool = False) -> list[LeaderRow]:
    """Models x benchmarks (x subject labels): the latest successful run per model, or every run."""
    rows: list[LeaderRow] = []
    for run in _chosen_runs(connection, since, all_runs):
        subjects = _rows(connection, schema.subjects, run.run_id)
        for bench in _rows(connection, schema.benchmarks, run.run_id):
            if bench["status"] != "success" or bench["value"] is None:
                continue
            if benchmark and bench["benchmark"] != benchmark:
                continue
            mine = [s for s in subjects if s["benchmark"] == bench["benchmark"]]
            if subject is None and not by_subject:
                stderr = combined_stderr([(s["n"], s["stderr"]) for s in mine])
                rows.append(LeaderRow(run.model, bench["benchmark"], None, bench["metric"], bench["value"], stderr,
                                      bench["n"], run.run_id, run.finished_at))
                continue
            for item in mine:
                if subject is not None and item["subject"] != subject:
                    continue
                rows.append(LeaderRow(run.model, bench["benchmark"], item["subject"], item["metric"],
                                      item["value"], item["stderr"], item["n"], run.run_id, run.finished_at))
    rows.sort(key=lambda r: (r.benchmark, r.subject or "", -r.value, r.model or "", r.run_id))
    return rows


@dataclass
class HistoryRow:
    run_id: str
    status: str
    finished_at: str | None
    benchmark: str | None
    benchmark_status: str | None
    metric: str | None
    value: float | None
    n: int | None


def history(connection: sa.Connection, model: str, benchmark: str | None = None) -> list[HistoryRow]:
    """Every run of ``model`` over time, failed ones included (with no score)."""
    runs = list(connection.execute(
        sa.select(schema.runs.c.run_id, schema.runs.c.status, schema.runs.c.finished_at)
        .where(schema.runs.c.model == model).order_by(schema.runs.c.finished_at, schema.runs.c.run_id)))
    if not runs:
        raise NotInStore(f"no run of model {model!r} in the store", "model")
    rows = []
    for run in runs:
        benches = [b for b in _rows(connection, schema.benchmarks, run.run_id)
                   if benchmark is None or b["benchmark"] == benchmark]
        if not benches:
            rows.append(HistoryRow(run.run_id, run.status, run.finished_at, benchmark, None, None, None, None))
        for bench in sorted(benches, key=lambda b: b["benchmark"]):
            rows.append(HistoryRow(run.run_id, run.status, run.finished_at, bench["benchmark"], bench["status"],
                                   bench["metric"], bench["value"], bench["n"]))
    return rows
