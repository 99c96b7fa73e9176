"""incremental rollups: a change log of rollup keys, fed by triggers on the source tables

`celery_stack_rollup_mark(rule, column[, rule, column...])` is a row trigger function: on
INSERT, DELETE and UPDATE of the listed columns it writes the old and new value of `column`
into rollup_changes for `rule`. The rule deletes the keys it recomputes in the same
statement, so a change committed after that statement's snapshot stays in the log for the next
run. rollup_state records that a rule's one full pass is done (keys changed before the
triggers existed are in no log). The shipped rollups get their triggers here; an operator's
incremental rollup gets them from a CREATE TRIGGER that the boot check prints.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Hand-written: a trigger function is SQL by nature. Keys are stored as text (to_jsonb ->>),
# the rule casts them back to its target key's type.
MARK = """
CREATE FUNCTION celery_stack_rollup_mark() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    i int;
    old_key text;
    new_key text;
BEGIN
    FOR i IN 0 .. TG_NARGS - 1 BY 2 LOOP
        old_key := NULL;
        new_key := NULL;
        IF TG_OP <> 'DELETE' THEN new_key := to_jsonb(NEW) ->> TG_ARGV[i + 1]; END IF;
        IF TG_OP <> 'INSERT' THEN old_key := to_jsonb(OLD) ->> TG_ARGV[i + 1]; END IF;
        IF new_key IS NOT NULL THEN
            INSERT INTO rollup_changes (rule, key) VALUES (TG_ARGV[i], new_key);
        END IF;
        IF old_key IS NOT NULL AND old_key IS DISTINCT FROM new_key THEN
            INSERT INTO rollup_changes (rule, key) VALUES (TG_ARGV[i], old_key);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$
"""

# (trigger, table, columns whose UPDATE changes an aggregate, rule, key column): the two
# shipped rollups of celery_stack_core.rules.defaults.
USERS = "update-all-users-statistics"
EXPERTS = "update-featured-task-experts-response-time"
TRIGGERS = [
    ("rollup_user_statistics", "chats", ["user_id"], USERS, "user_id"),
    ("rollup_user_statistics", "chat_messages", ["sender_id"], USERS, "sender_id"),
    ("rollup_user_statistics", "marketplace_tasks", ["poster_id"], USERS, "poster_id"),
    (
        "rollup_expert_stats",
        "marketplace_tasks",
        ["expert_id", "response_seconds"],
        EXPERTS,
        "expert_id",
    ),
]


def upgrade() -> None:
    op.create_table(
        "rollup_changes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_changes")),
    )
    op.create_index("ix_rollup_changes_rule_key", "rollup_changes", ["rule", "key"], unique=False)
    op.create_table(
        "rollup_state",
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("full_pass_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("rule", name=op.f("pk_rollup_state")),
    )
    op.execute(MARK)
    for name, table, columns, rule, key in TRIGGERS:
        op.execute(
            f"CREATE TRIGGER {name} AFTER INSERT OR DELETE OR UPDATE OF {', '.join(columns)} "
            f"ON {table} FOR EACH ROW EXECUTE FUNCTION celery_stack_rollup_mark('{rule}', '{key}')"
        )


def downgrade() -> None:
    for name, table, *_ in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON {table}")
    op.execute("DROP FUNCTION celery_stack_rollup_mark()")
    op.drop_table("rollup_state")
    op.drop_index("ix_rollup_changes_rule_key", table_name="rollup_changes")
    op.drop_table("rollup_changes")
