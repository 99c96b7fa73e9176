"""janitor runs: one row per finished real sweep run, from every entry point

The CronJob's pods finish before Prometheus scrapes them, so each run records itself here and
the maintenance worker exports the newest row per sweep (celery_stack_core.sweeps.runs).

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "janitor_runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("sweep", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column(
            "finished_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("found", sa.Integer(), nullable=False),
        sa.Column("removed", sa.Integer(), nullable=False),
        sa.Column("skipped", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_janitor_runs")),
    )
    op.create_index("ix_janitor_runs_sweep_finished", "janitor_runs", ["sweep", "finished_at"])


def downgrade() -> None:
    op.drop_table("janitor_runs")
