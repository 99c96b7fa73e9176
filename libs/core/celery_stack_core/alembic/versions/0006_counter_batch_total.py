"""the flush ledger records the sum of the deltas each batch applied

With it, "every view in the counted tables came through exactly one ledger row" is a query
(sum of the ledger's totals = sum of the counters), which the chaos test checks after kill -9
at every step of the flush.

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"  # written against "0003"; chained after main's 0004 at merge
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "counter_batches",
        sa.Column("total", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("counter_batches", "total")
