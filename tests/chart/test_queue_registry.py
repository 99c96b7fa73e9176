"""The chart against the queue registry (libs/core queues.py): the chart cannot import Python,
so this test holds them together. Every queue of values.yaml is a registered queue, runs the
registry's console script, and defaults to the registry's limits; every registered queue has a
values entry. What the ConfigMap passes is what the settings read (<QUEUE>_* variables)."""

from __future__ import annotations

import tomllib

import pytest
import yaml
from chartlib import CHART, ROOT, render_chart

from celery_stack_core.config import QueueSettings
from celery_stack_core.queues import QUEUES

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def effective(name: str) -> dict:
    return {**VALUES["queueDefaults"], **VALUES["queues"][name]}


def console_scripts() -> set[str]:
    out: set[str] = set()
    for pyproject in ROOT.glob("services/*/pyproject.toml"):
        out |= set(tomllib.loads(pyproject.read_text())["project"].get("scripts", {}))
    return out


def test_values_and_registry_name_the_same_queues():
    assert set(VALUES["queues"]) == set(QUEUES)


@pytest.mark.parametrize("name", sorted(QUEUES))
def test_a_queue_runs_the_registry_command_with_its_default_limits(name):
    spec, q = QUEUES[name], effective(name)
    assert q["command"] == spec.command
    assert spec.command in console_scripts(), f"{spec.command} is no console script"
    assert (q["softTimeLimit"], q["timeLimit"], q["prefetchMultiplier"]) == (
        spec.soft_time_limit,
        spec.time_limit,
        spec.prefetch,
    )


def test_the_configmap_carries_every_queue_variable_the_settings_read():
    docs = render_chart()
    data = next(
        d["data"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
    )
    for spec in QUEUES.values():
        assert set(QueueSettings.env_names(spec)) <= set(data)
