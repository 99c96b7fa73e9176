"""Beat carries one entry per maintenance rule, with the rule's schedule and time limits; a
name defined twice is refused when the schedule is built."""

import pytest

from celery_stack_beat.rules_schedule import refuse_duplicates
from celery_stack_beat.runner import slot_id
from celery_stack_beat.schedule import Entry, schedule
from celery_stack_core.config import Settings


def test_every_rule_has_an_entry_with_its_limits():
    entries = {e.name: e for e in schedule(Settings())}
    coupons = entries["check-expired-coupons"]
    assert (coupons.task, coupons.every, coupons.queue) == (
        "maintenance.rule.check-expired-coupons",
        300,
        "maintenance",
    )
    nightly = entries["cleanup-long-inactive-chats"]
    assert (nightly.cron, nightly.catch_up, nightly.time_limit) == ("0 2 * * *", "once", 1800)
    assert slot_id(coupons, 1_800_000_000_000) == "beat:check-expired-coupons:1800000000000"
    assert sum(e.task.startswith("maintenance.rule.") for e in entries.values()) == 11


def test_operator_rules_and_overrides_reach_the_schedule():
    mine = {
        "name": "expire-vouchers",
        "kind": "transition",
        "cron": "*/5 * * * *",
        "table": "vouchers",
        "timestamp": "valid_until",
        "from": ["active"],
        "to": "expired",
    }
    s = Settings(
        MAINTENANCE_RULES=[mine],
        MAINTENANCE_RULE_OVERRIDES={"check-expired-coupons": {"every": 3}},
    )
    entries = {e.name: e for e in schedule(s)}
    assert entries["expire-vouchers"].cron == "*/5 * * * *"
    assert entries["check-expired-coupons"].every == 3


def test_an_entry_name_defined_twice_is_refused():
    e = Entry("x", "maintenance.outbox_relay", 1.0)
    with pytest.raises(ValueError, match="beat entry 'x' is defined twice"):
        refuse_duplicates([e, e])


# Field report 003's beat schedule, job by job (every: seconds; cron: UTC).
REPORT_003 = {
    "process-customer-service-queue": ("every", 30),
    "auto-end-timeout-chats": ("every", 30),
    "send-timeout-warnings": ("every", 30),
    "cancel-expired-tasks": ("every", 60),
    "check-expired-coupons": ("every", 300),
    "check-expired-invitation-codes": ("every", 300),
    "check-expired-points": ("every", 300),
    "check-and-end-activities": ("every", 300),
    "update-all-users-statistics": ("every", 600),
    "cleanup-long-inactive-chats": ("cron", "0 2 * * *"),
    "update-featured-task-experts-response-time": ("cron", "0 3 * * *"),
}


def test_the_default_schedule_is_report_003s():
    entries = {e.name: e for e in schedule(Settings()) if e.task.startswith("maintenance.rule.")}
    got = {name: ("cron", e.cron) if e.cron else ("every", e.every) for name, e in entries.items()}
    assert got == REPORT_003
    assert {e.queue for e in entries.values()} == {"maintenance"}


def test_a_rule_slot_carries_the_rules_own_time_limits():
    """The worker takes a message's time limits over its queue's (celery.worker.request):
    beat puts each rule's on every slot it sends."""
    from celery_stack_beat.runner import send_slot

    sent = []

    class App:
        def send_task(self, name, **options):
            sent.append((name, options))

    limits = {"soft_time_limit": 11, "time_limit": 13}
    settings = Settings(MAINTENANCE_RULE_OVERRIDES={"check-expired-coupons": limits})
    entries = {e.name: e for e in schedule(settings)}
    send_slot(App(), entries["check-expired-coupons"], 1_800_000_000_000, 1)
    ((name, options),) = sent
    assert name == "maintenance.rule.check-expired-coupons"
    assert options["task_id"] == "beat:check-expired-coupons:1800000000000"
    assert (options["soft_time_limit"], options["time_limit"]) == (11, 13)
