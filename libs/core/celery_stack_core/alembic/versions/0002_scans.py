"""scans: scans, findings, outbox

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True, default: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        server_default=sa.func.now() if default else None,
        nullable=nullable,
    )


def upgrade() -> None:
    op.create_table(
        "scans",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("domain", sa.Text(), nullable=False),
        sa.Column("config", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("deliveries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False, default=True),
        _ts("queued_at", nullable=False, default=True),
        _ts("started_at"),
        _ts("heartbeat_at"),
        _ts("finished_at"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'dead')",
            name="ck_scans_status",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_scans"),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_scans_owner_idempotency_key"),
    )
    op.create_index("ix_scans_owner_created", "scans", ["owner", "created_at", "id"])
    op.create_index("ix_scans_created", "scans", ["created_at", "id"])
    op.create_index("ix_scans_status", "scans", ["status"])
    op.create_table(
        "findings",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("scan_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(), server_default="{}", nullable=False),
        _ts("created_at", nullable=False, default=True),
        sa.CheckConstraint("severity IN ('info', 'low', 'medium', 'high')", name="ck_findings_severity"),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name="fk_findings_scan_id_scans", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_findings"),
        sa.UniqueConstraint("scan_id", "key", name="uq_findings_scan_key"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("task_name", sa.Text(), nullable=False),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("args", postgresql.JSONB(), server_default="[]", nullable=False),
        sa.Column("kwargs", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("trace_context", postgresql.JSONB(), server_default="{}", nullable=False),
        _ts("created_at", nullable=False, default=True),
        _ts("sent_at"),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index(
        "ix_outbox_unsent", "outbox", ["created_at"], postgresql_where=sa.text("sent_at IS NULL")
    )


def downgrade() -> None:
    op.drop_table("outbox")
    op.drop_table("findings")
    op.drop_table("scans")
