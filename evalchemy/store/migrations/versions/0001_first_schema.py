"""First schema: runs, benchmarks, scores (with their comparability key), subjects and per-question samples.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.String(40)),
        sa.Column("finished_at", sa.String(40)),
        sa.Column("duration_s", sa.Float),
        sa.Column("host", sa.String(255)),
        sa.Column("endpoint", sa.Text),
        sa.Column("model", sa.String(255)),
        sa.Column("backend", sa.String(64)),
        sa.Column("config_path", sa.Text),
        sa.Column("config_sha256", sa.String(64)),
        sa.Column("config", sa.JSON),
        sa.Column("versions", sa.JSON),
        sa.Column("seed", sa.JSON),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("run_dir", sa.Text),
        sa.Column("recorded_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "benchmarks",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("benchmark", sa.String(255), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("metric", sa.String(255)),
        sa.Column("value", sa.Float),
        sa.Column("n", sa.Integer),
    )
    op.create_table(
        "scores",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("benchmark", sa.String(255), primary_key=True),
        sa.Column("task", sa.String(255), primary_key=True),
        sa.Column("metric", sa.String(255), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("stderr", sa.Float),
        sa.Column("n", sa.Integer),
        sa.Column("higher_is_better", sa.Boolean),
        sa.Column("task_config_sha256", sa.String(64)),
        sa.Column("num_fewshot", sa.Integer),
        sa.Column("sample_limit", sa.Float),
        sa.Column("lm_eval_version", sa.String(64)),
        sa.Column("data_sha256", sa.String(64)),
    )
    op.create_table(
        "subjects",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("benchmark", sa.String(255), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("task", sa.String(255)),
        sa.Column("metric", sa.String(255)),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("stderr", sa.Float),
        sa.Column("n", sa.Integer),
    )
    op.create_table(
        "samples",
        sa.Column("run_id", sa.String(128), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("benchmark", sa.String(255), primary_key=True),
        sa.Column("task", sa.String(255), primary_key=True),
        sa.Column("doc_id", sa.String(64), primary_key=True),
        sa.Column("doc_hash", sa.String(64)),
        sa.Column("prompt_hash", sa.String(64)),
        sa.Column("subject", sa.String(255)),
        sa.Column("target", sa.Text),
        sa.Column("prediction", sa.Text),
        sa.Column("correct", sa.Float),
        sa.Column("metrics", sa.JSON),
    )


def downgrade() -> None:
    for table in ("samples", "subjects", "scores", "benchmarks", "runs"):
        op.drop_table(table)
