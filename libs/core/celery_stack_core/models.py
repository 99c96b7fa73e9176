"""SQLAlchemy models. The schema itself is made only by the alembic migrations beside this file;
a test checks that these models and the migrated schema agree."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _count() -> Mapped[int]:
    return mapped_column(BigInteger, nullable=False, server_default="0")


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class _Content:
    """A counted thing: posts and articles have the same columns."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    author_id: Mapped[str] = mapped_column(Text, nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    views: Mapped[int] = _count()
    likes: Mapped[int] = _count()
    collects: Mapped[int] = _count()
    shares: Mapped[int] = _count()
    comments: Mapped[int] = _count()


class _Comment:
    """A comment on a counted thing; its parent's column is declared by the subclass."""

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    author_id: Mapped[str] = mapped_column(Text, nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()
    likes: Mapped[int] = _count()


class Post(_Content, Base):
    __tablename__ = "posts"


class Article(_Content, Base):
    __tablename__ = "articles"


class PostComment(_Comment, Base):
    __tablename__ = "post_comments"
    post_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("posts.id", ondelete="CASCADE"), nullable=False, index=True
    )


class ArticleComment(_Comment, Base):
    __tablename__ = "article_comments"
    article_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("articles.id", ondelete="CASCADE"), nullable=False, index=True
    )


class UserAction(Base):
    """One row per user action: the source of truth for likes, collects and shares."""

    __tablename__ = "user_actions"
    __table_args__ = (
        UniqueConstraint("user_id", "target_type", "target_id", "kind", name="uq_user_actions"),
        CheckConstraint(
            "target_type IN ('post', 'article', 'post_comment', 'article_comment')",
            name="target_type",
        ),
        CheckConstraint("kind IN ('like', 'collect', 'share')", name="kind"),
        Index("ix_user_actions_target", "target_type", "target_id", "kind"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False)
    target_type: Mapped[str] = mapped_column(Text, nullable=False)
    target_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class CounterBatch(Base):
    """Ledger of applied flush batches: a batch id is applied at most once (DESIGN "Counters")."""

    __tablename__ = "counter_batches"
    batch_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    counter: Mapped[str] = mapped_column(Text, nullable=False)  # e.g. "post:views:3"
    keys: Mapped[int] = mapped_column(Integer, nullable=False)
    applied: Mapped[int] = mapped_column(Integer, nullable=False)
    dropped: Mapped[int] = mapped_column(Integer, nullable=False)
    # Sum of the deltas the batch applied (rows that exist): sum(total) = sum(counters).
    total: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    applied_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True
    )


def status_in(statuses: tuple[str, ...]) -> str:
    """`status IN ('a', 'b')`: a CHECK constraint or index predicate built from a status tuple,
    in the text the migrations wrote (the models-vs-migrations test compares)."""
    return "status IN ({})".format(", ".join(f"'{s}'" for s in statuses))


# A scan's status, written once: the API's response type, the CHECK constraint and the
# lifecycle's tuples all derive from this Literal.
ScanStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "dead"]
SCAN_STATUSES: tuple[ScanStatus, ...] = get_args(ScanStatus)
LIVE_STATUSES: tuple[ScanStatus, ...] = ("queued", "running")
TERMINAL_STATUSES: tuple[ScanStatus, ...] = tuple(
    s for s in SCAN_STATUSES if s not in LIVE_STATUSES
)


class Scan(Base):
    """One requested domain scan (DESIGN "Scans"). `attempt` grows with each retry; the Celery
    task id of an attempt is `scan-{id}-{attempt}`; `deliveries` counts the messages of the
    current attempt that a worker started, to cap redeliveries."""

    __tablename__ = "scans"
    __table_args__ = (
        CheckConstraint(status_in(SCAN_STATUSES), name="status"),  # migration 0002's text
        UniqueConstraint("owner", "idempotency_key", name="uq_scans_owner_idempotency_key"),
        Index("ix_scans_owner_created", "owner", "created_at", "id"),
        Index("ix_scans_created", "created_at", "id"),
        Index("ix_scans_status", "status"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    owner: Mapped[str] = mapped_column(Text, nullable=False)
    domain: Mapped[str] = mapped_column(Text, nullable=False)
    config: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, server_default="{}")
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="queued")
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    deliveries: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _created()
    queued_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Finding(Base):
    """What a scan found; unique per scan + key, so a redelivered scan cannot duplicate it."""

    __tablename__ = "findings"
    __table_args__ = (
        UniqueConstraint("scan_id", "key", name="uq_findings_scan_key"),
        CheckConstraint("severity IN ('info', 'low', 'medium', 'high')", name="severity"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    scan_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("scans.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(Text, nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    severity: Mapped[str] = mapped_column(Text, nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    detail: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, server_default="{}")
    created_at: Mapped[datetime] = _created()


class Outbox(Base):
    """Messages committed with the rows they are about and published after COMMIT (DESIGN
    "Scans"); the relay sends what a crash left unsent."""

    __tablename__ = "outbox"
    __table_args__ = (
        # DDL: the partial index predicate, as migration 0002 writes it.
        Index("ix_outbox_unsent", "created_at", postgresql_where=text("sent_at IS NULL")),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    task_name: Mapped[str] = mapped_column(Text, nullable=False)
    task_id: Mapped[str] = mapped_column(Text, nullable=False)
    queue: Mapped[str] = mapped_column(Text, nullable=False)
    args: Mapped[list[object]] = mapped_column(JSONB, nullable=False, server_default="[]")
    kwargs: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, server_default="{}")
    trace_context: Mapped[dict[str, str]] = mapped_column(
        JSONB, nullable=False, server_default="{}"
    )
    created_at: Mapped[datetime] = _created()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


# --- janitor --------------------------------------------------------------------------------------
# A maintenance job's status, written once: the CHECK constraint, the one-active-job-per-kind
# index and the job queries derive from these.
JobStatus = Literal["queued", "running", "succeeded", "failed"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
ACTIVE_JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running")


class MaintenanceJob(Base):
    """A janitor sweep started through the API and run on the maintenance queue; at most one
    queued or running job per kind (the partial unique index), so a second start is a 409."""

    __tablename__ = "maintenance_jobs"
    __table_args__ = (
        CheckConstraint(status_in(JOB_STATUSES), name="status"),
        Index(
            "uq_maintenance_jobs_active_kind",
            "kind",
            unique=True,
            # DDL: the partial index predicate, as migration 0005 writes it.
            postgresql_where=text(status_in(ACTIVE_JOB_STATUSES)),
        ),
        Index("ix_maintenance_jobs_created", "created_at"),
    )
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="queued")
    requested_by: Mapped[str] = mapped_column(Text, nullable=False)
    progress: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, server_default="{}")
    report: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False, server_default="{}")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JanitorRun(Base):
    """One finished real run of one janitor sweep, whatever started it (the CronJob's CLI, a
    person's CLI, an API job on the maintenance worker, the operator's CronJobs). The
    maintenance worker exports the newest row per sweep to Prometheus (sweeps/runs.py): a
    CronJob pod lives too briefly to be scraped itself."""

    __tablename__ = "janitor_runs"
    __table_args__ = (Index("ix_janitor_runs_sweep_finished", "sweep", "finished_at"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    sweep: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)  # cli | job
    finished_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    found: Mapped[int] = mapped_column(Integer, nullable=False)
    removed: Mapped[int] = mapped_column(Integer, nullable=False)
    skipped: Mapped[dict[str, object]] = mapped_column(JSONB, nullable=False)  # by reason
    duration_seconds: Mapped[float] = mapped_column(Float, nullable=False)
    complete: Mapped[bool] = mapped_column(Boolean, nullable=False)


# --- maintenance rules ----------------------------------------------------------------------------
# Example tables that reproduce field report 003's scheduled jobs, and the rule engine's own
# bookkeeping (DESIGN "Maintenance"). The rules themselves are data: celery_stack_core.rules.


def _status(default: str) -> Mapped[str]:
    return mapped_column(Text, nullable=False, server_default=default)


def _ts() -> Mapped[datetime | None]:
    return mapped_column(DateTime(timezone=True), nullable=True)


def _deadline() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False)


class Coupon(Base):
    __tablename__ = "coupons"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'used', 'expired')", name="status"),
        Index("ix_coupons_status_expires", "status", "expires_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    user_id: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = _status("active")
    expires_at: Mapped[datetime] = _deadline()
    expired_at: Mapped[datetime | None] = _ts()
    created_at: Mapped[datetime] = _created()


class InvitationCode(Base):
    __tablename__ = "invitation_codes"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'used', 'expired')", name="status"),
        Index("ix_invitation_codes_status_expires", "status", "expires_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    status: Mapped[str] = _status("active")
    expires_at: Mapped[datetime] = _deadline()
    expired_at: Mapped[datetime | None] = _ts()
    created_at: Mapped[datetime] = _created()


class PointGrant(Base):
    """Points granted to a user that expire: expiry deducts them from the user's balance."""

    __tablename__ = "point_grants"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'expired')", name="status"),
        CheckConstraint("points > 0", name="points"),
        Index("ix_point_grants_status_expires", "status", "expires_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    points: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = _status("active")
    expires_at: Mapped[datetime] = _deadline()
    expired_at: Mapped[datetime | None] = _ts()
    created_at: Mapped[datetime] = _created()


class PointBalance(Base):
    __tablename__ = "point_balances"
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    balance: Mapped[int] = _count()
    updated_at: Mapped[datetime] = _created()


class Activity(Base):
    __tablename__ = "activities"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'ended')", name="status"),
        Index("ix_activities_status_ends", "status", "ends_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = _status("active")
    ends_at: Mapped[datetime] = _deadline()
    ended_at: Mapped[datetime | None] = _ts()
    created_at: Mapped[datetime] = _created()


class MarketplaceTask(Base):
    """A task posted by a user for experts; `response_seconds` is set when an expert responds."""

    __tablename__ = "marketplace_tasks"
    __table_args__ = (
        CheckConstraint("status IN ('open', 'taken', 'done', 'cancelled')", name="status"),
        Index("ix_marketplace_tasks_status_deadline", "status", "deadline_at"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    poster_id: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    expert_id: Mapped[str | None] = mapped_column(Text, nullable=True, index=True)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = _status("open")
    deadline_at: Mapped[datetime] = _deadline()
    response_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancelled_at: Mapped[datetime | None] = _ts()
    created_at: Mapped[datetime] = _created()


class ExpertStat(Base):
    """Rollup of marketplace_tasks per expert (report 003's featured experts' response time)."""

    __tablename__ = "expert_stats"
    expert_id: Mapped[str] = mapped_column(Text, primary_key=True)
    tasks: Mapped[int] = _count()
    avg_response_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = _created()


AgentStatus = Literal["available", "offline"]
AGENT_STATUSES: tuple[AgentStatus, ...] = get_args(AgentStatus)


class Agent(Base):
    """A customer-service agent who takes up to `capacity` active chats."""

    __tablename__ = "agents"
    __table_args__ = (
        CheckConstraint(status_in(AGENT_STATUSES), name="status"),
        CheckConstraint("capacity >= 0", name="capacity"),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = _status("available")
    capacity: Mapped[int] = mapped_column(Integer, nullable=False, server_default="3")
    created_at: Mapped[datetime] = _created()


class Chat(Base):
    __tablename__ = "chats"
    __table_args__ = (
        CheckConstraint("status IN ('waiting', 'active', 'ended', 'archived')", name="status"),
        # An active chat has exactly one agent; a waiting one none.
        CheckConstraint("status <> 'active' OR agent_id IS NOT NULL", name="agent"),
        Index("ix_chats_status_created", "status", "created_at"),
        Index("ix_chats_status_last_message", "status", "last_message_at"),
        # DDL: the partial index predicate, as migration 0004 writes it.
        Index("ix_chats_agent_active", "agent_id", postgresql_where=text("status = 'active'")),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    agent_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True
    )
    status: Mapped[str] = _status("waiting")
    created_at: Mapped[datetime] = _created()
    assigned_at: Mapped[datetime | None] = _ts()
    last_message_at: Mapped[datetime] = _created()
    ended_at: Mapped[datetime | None] = _ts()


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    chat_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("chats.id", ondelete="CASCADE"), nullable=False, index=True
    )
    sender_id: Mapped[str] = mapped_column(Text, nullable=False, index=True)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class UserStatistic(Base):
    """Rollup per user from chats, chat_messages and marketplace_tasks."""

    __tablename__ = "user_statistics"
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    chats: Mapped[int] = _count()
    messages: Mapped[int] = _count()
    tasks_posted: Mapped[int] = _count()
    updated_at: Mapped[datetime] = _created()


class RuleNotification(Base):
    """One notification per row and warning rule, ever: the unique key refuses a second one.
    Delivery goes through the outbox (task `maintenance.rule_notify`)."""

    __tablename__ = "rule_notifications"
    __table_args__ = (UniqueConstraint("rule", "row_key", name="uq_rule_notifications_rule_row"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(Text, nullable=False)
    row_key: Mapped[str] = mapped_column(Text, nullable=False)
    recipient: Mapped[str | None] = mapped_column(Text, nullable=True)
    message: Mapped[str] = mapped_column(Text, nullable=False)
    deadline: Mapped[datetime] = _deadline()
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = _ts()


# A rule run's status: the CHECK constraint, the rules engine and the API's response type.
RuleRunStatus = Literal["running", "done", "failed"]
RULE_RUN_STATUSES: tuple[RuleRunStatus, ...] = get_args(RuleRunStatus)


class RuleRun(Base):
    """One execution of a rule, keyed by its Celery task id (beat: entry + due time): a slot
    that already finished is refused, one killed mid-run is resumed by its redelivery."""

    __tablename__ = "rule_runs"
    __table_args__ = (
        CheckConstraint(status_in(RULE_RUN_STATUSES), name="status"),
        Index("ix_rule_runs_rule_started", "rule", "started_at"),
    )
    task_id: Mapped[str] = mapped_column(Text, primary_key=True)
    rule: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = _status("running")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    rows: Mapped[int] = _count()
    batches: Mapped[int] = _count()
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = _ts()


class RollupChange(Base):
    """A key whose source rows changed, for one incremental rollup rule: written by the trigger
    function `celery_stack_rollup_mark(rule, column, ...)` on the source tables (migration
    0008), consumed (deleted) by the rule in the transaction that recomputes the key."""

    __tablename__ = "rollup_changes"
    __table_args__ = (Index("ix_rollup_changes_rule_key", "rule", "key"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(Text, nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = _created()


class RollupState(Base):
    """An incremental rollup's one full pass: until its row exists the rule recomputes every
    key (the changes before its triggers existed are in no log); after, only changed keys.
    Deleting the row asks for another full pass."""

    __tablename__ = "rollup_state"
    rule: Mapped[str] = mapped_column(Text, primary_key=True)
    full_pass_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
