"""counters: posts, articles, comments, user actions, flush ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _counts(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.BigInteger(), server_default="0", nullable=False) for n in names]


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    for table in ("posts", "articles"):
        op.create_table(
            table,
            sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
            sa.Column("author_id", sa.Text(), nullable=False),
            sa.Column("title", sa.Text(), nullable=False),
            _created(),
            *_counts("views", "likes", "collects", "shares", "comments"),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        )
    for table, parent, fk in (("post_comments", "posts", "post_id"), ("article_comments", "articles", "article_id")):
        op.create_table(
            table,
            sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
            sa.Column(fk, sa.BigInteger(), nullable=False),
            sa.Column("author_id", sa.Text(), nullable=False),
            sa.Column("body", sa.Text(), nullable=False),
            _created(),
            *_counts("likes"),
            sa.ForeignKeyConstraint([fk], [f"{parent}.id"], name=f"fk_{table}_{fk}_{parent}", ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
        )
        op.create_index(f"ix_{table}_{fk}", table, [fk])
    op.create_table(
        "user_actions",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("target_type", sa.Text(), nullable=False),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        _created(),
        sa.CheckConstraint(
            "target_type IN ('post', 'article', 'post_comment', 'article_comment')",
            name="ck_user_actions_target_type",
        ),
        sa.CheckConstraint("kind IN ('like', 'collect', 'share')", name="ck_user_actions_kind"),
        sa.PrimaryKeyConstraint("id", name="pk_user_actions"),
        sa.UniqueConstraint("user_id", "target_type", "target_id", "kind", name="uq_user_actions"),
    )
    op.create_index("ix_user_actions_target", "user_actions", ["target_type", "target_id", "kind"])
    op.create_table(
        "counter_batches",
        sa.Column("batch_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("counter", sa.Text(), nullable=False),
        sa.Column("keys", sa.Integer(), nullable=False),
        sa.Column("applied", sa.Integer(), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name="pk_counter_batches"),
    )
    op.create_index("ix_counter_batches_applied_at", "counter_batches", ["applied_at"])


def downgrade() -> None:
    op.drop_table("counter_batches")
    op.drop_table("user_actions")
    op.drop_table("article_comments")
    op.drop_table("post_comments")
    op.drop_table("articles")
    op.drop_table("posts")
