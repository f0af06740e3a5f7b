"""The store's tables as the code reads and writes them: the schema at revision ``db.HEAD``.

A change here is a new Alembic revision in ``migrations/versions`` (tested by upgrading a filled database)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def _run_id() -> sa.Column:
    return sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)


runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.String(40)),
    sa.Column("finished_at", sa.String(40)),  # UTC, ISO 8601: sorts as text on every database
    sa.Column("duration_s", sa.Float),
    sa.Column("host", sa.String(255)),
    sa.Column("endpoint", sa.Text),  # credentials removed
    sa.Column("model", sa.String(255)),
    sa.Column("backend", sa.String(64)),
    sa.Column("config_path", sa.Text),
    sa.Column("config_sha256", sa.String(64)),
    sa.Column("config", sa.JSON),  # the config file's content, when it still matched its sha256
    sa.Column("versions", sa.JSON),
    sa.Column("seed", sa.JSON),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("run_dir", sa.Text),
    sa.Column("recorded_at", sa.String(40), nullable=False),
)

benchmarks = sa.Table(
    "benchmarks", metadata, _run_id(),
    sa.Column("benchmark", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("metric", sa.String(255)),
    sa.Column("value", sa.Float),
    sa.Column("n", sa.Integer),
)

scores = sa.Table(
    "scores", metadata, _run_id(),
    sa.Column("benchmark", sa.String(255), primary_key=True),
    sa.Column("task", sa.String(255), primary_key=True),
    sa.Column("metric", sa.String(255), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("stderr", sa.Float),
    sa.Column("n", sa.Integer),
    sa.Column("higher_is_better", sa.Boolean),
    # the comparability key: two scores measure the same thing only when all of these agree
    sa.Column("task_config_sha256", sa.String(64)),
    sa.Column("num_fewshot", sa.Integer),
    sa.Column("sample_limit", sa.Float),
    sa.Column("lm_eval_version", sa.String(64)),
    sa.Column("data_sha256", sa.String(64)),
)

subjects = sa.Table(
    "subjects", metadata, _run_id(),
    sa.Column("benchmark", sa.String(255), primary_key=True),
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("task", sa.String(255)),
    sa.Column("metric", sa.String(255)),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("stderr", sa.Float),
    sa.Column("n", sa.Integer),
)

samples = sa.Table(
    "samples", metadata, _run_id(),
    sa.Column("benchmark", sa.String(255), primary_key=True),
    sa.Column("task", sa.String(255), primary_key=True),
    sa.Column("doc_id", sa.String(64), primary_key=True),
    sa.Column("doc_hash", sa.String(64)),
    sa.Column("prompt_hash", sa.String(64)),
    sa.Column("subject", sa.String(255)),
    sa.Column("target", sa.Text),
    sa.Column("prediction", sa.Text),
    sa.Column("correct", sa.Float),  # the primary metric's value for this question
    sa.Column("metrics", sa.JSON),
)

CHILD_TABLES = (samples, subjects, scores, benchmarks)

# runs submitted to the queue (submit / worker / status): not a child of runs, which holds finished runs only
queue_runs = sa.Table(
    "queue_runs", metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("queue", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("worker", sa.String(255)),
    sa.Column("heartbeat", sa.Float),
    sa.Column("cancel", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16)),
    sa.Column("exit_code", sa.Integer),
    sa.Column("submitted_at", sa.String(40), nullable=False),
    sa.Column("started_at", sa.String(40)),
    sa.Column("finished_at", sa.String(40)),
)
