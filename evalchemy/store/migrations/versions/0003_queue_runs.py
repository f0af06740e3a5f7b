"""Queued runs: one row per submitted run, its state (PENDING, STARTED, SUCCESS, FAILURE, REVOKED), the worker
that holds it (host, pid, heartbeat) and the cancel flag.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_runs",
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
    op.create_index("ix_queue_runs_state", "queue_runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_queue_runs_state", table_name="queue_runs")
    op.drop_table("queue_runs")
