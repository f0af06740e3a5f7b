"""Indexes for the leaderboard and history queries (latest run per model, runs over time).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_model_finished", "runs", ["model", "finished_at"])
    op.create_index("ix_runs_finished", "runs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_finished", table_name="runs")
    op.drop_index("ix_runs_model_finished", table_name="runs")
