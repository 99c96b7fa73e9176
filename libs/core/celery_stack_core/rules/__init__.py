"""Maintenance rules (DESIGN "Maintenance"; field report 003): declarative jobs over tables.

spec.py        the rule kinds, as pydantic models
defaults.py    the shipped rule set (report 003's eleven jobs)
load.py        defaults + overrides + the operator's rules; names unique
bind.py        reflect the tables a rule names and check every column (at startup)
statements.py  one batch of each kind, SQLAlchemy Core, FOR UPDATE SKIP LOCKED
engine.py      the run loop: a transaction per batch, transient retries, metrics, runs
schedule.py    next due time of a rule (for the API; beat computes its own slots)
"""

from __future__ import annotations

from celery_stack_core.config import Settings
from celery_stack_core.rules.load import RuleConfigError, build_rules
from celery_stack_core.rules.spec import Rule


def load_rules(settings: Settings) -> list[Rule]:
    """This deployment's rules from settings; RuleConfigError names the rule and field."""
    return build_rules(
        defaults=settings.maintenance.default_rules,
        overrides=settings.maintenance.rule_overrides,
        extra=settings.maintenance.rules,
    )


__all__ = ["Rule", "RuleConfigError", "load_rules"]
