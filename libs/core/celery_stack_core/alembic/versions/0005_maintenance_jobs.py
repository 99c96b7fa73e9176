"""maintenance jobs: janitor sweeps started through the API, run on the maintenance queue

One row per job: its kind, state, progress and the final report. At most one job per kind is
queued or running at a time (a partial unique index), so a second POST gets a 409.

Revision ID: 0005
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0006"  # written against "0003"; chained after main's 0006 at merge
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "maintenance_jobs",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column(
            "progress", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column(
            "report", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_maintenance_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_maintenance_jobs")),
    )
    op.create_index(
        "uq_maintenance_jobs_active_kind",
        "maintenance_jobs",
        ["kind"],
        unique=True,
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index("ix_maintenance_jobs_created", "maintenance_jobs", ["created_at"])


def downgrade() -> None:
    op.drop_table("maintenance_jobs")
