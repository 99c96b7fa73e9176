"""The chart carries the maintenance rules: values -> ConfigMap env -> the same rule set the
worker and beat load, and beat's entries for them (operators add rules without code);
malformed rules are refused by the schema at render time."""

from __future__ import annotations

import pytest
from chartlib import RenderError, one, render_chart

from celery_stack_beat.schedule import schedule
from celery_stack_core.config import Settings
from celery_stack_core.rules import load_rules

VOUCHERS = {
    "name": "expire-vouchers",
    "kind": "transition",
    "cron": "*/5 * * * *",
    "table": "vouchers",
    "timestamp": "valid_until",
    "from": ["active"],
    "to": "expired",
}


def config_env(values: dict | None = None) -> dict[str, str]:
    docs = render_chart(values, show_only=["config/config-configmap.yaml"])
    return one(docs, "ConfigMap", "cs-celery-stack-config")["data"]


def test_default_values_run_the_shipped_rules():
    env = config_env()
    rules = load_rules(Settings(**{k: v for k, v in env.items() if k.startswith("MAINTENANCE_")}))
    assert len(rules) == 11


def test_custom_rules_and_overrides_reach_the_services():
    env = config_env(
        {
            "maintenance": {
                "rules": {
                    "overrides": {"check-expired-coupons": {"every": 60, "batch_size": 2000}},
                    "custom": [VOUCHERS],
                }
            }
        }
    )
    settings = Settings(**{k: v for k, v in env.items() if k.startswith("MAINTENANCE_")})
    rules = {r.name: r for r in load_rules(settings)}
    assert rules["expire-vouchers"].cron == "*/5 * * * *"
    assert (rules["check-expired-coupons"].every, rules["check-expired-coupons"].batch_size) == (
        60,
        2000,
    )
    # ... and beat's entries, from the same rendered env: one per rule, with its schedule
    entries = {e.name: e for e in schedule(settings) if e.task.startswith("maintenance.rule.")}
    assert set(entries) == set(rules)
    assert (entries["expire-vouchers"].cron, entries["expire-vouchers"].task) == (
        "*/5 * * * *",
        "maintenance.rule.expire-vouchers",
    )
    assert entries["check-expired-coupons"].every == 60


@pytest.mark.parametrize(
    "custom",
    [
        {**VOUCHERS, "kind": "expire"},
        {**VOUCHERS, "name": "Bad Name"},
        {k: v for k, v in VOUCHERS.items() if k != "cron"},  # no schedule
        {**VOUCHERS, "every": 30},  # both every and cron
    ],
)
def test_malformed_rules_are_refused_at_render(custom):
    with pytest.raises(RenderError, match="maintenance"):
        render_chart({"maintenance": {"rules": {"custom": [custom]}}})
