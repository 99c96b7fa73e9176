"""Every `enabled` key of values.yaml, found by walking the file (a toggle added later is
covered without touching this test): switched on, it renders objects that switched off it does
not, or the render fails with a message that names it. None may be silently empty.

Two toggles use an API the cluster may lack (`keda.enabled`: KEDA's ScaledObject, else the HPA
fallback; `metrics.serviceMonitor.enabled`: the Prometheus Operator's monitors, else
prometheus.io/* pod annotations). With the API they render their objects; without it the
fallback renders, and NOTES.txt says which one the release got."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from chartlib import CHART, KEDA, MONITORING, RenderError, notes, render_chart

VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
APIS = (KEDA, MONITORING)


def toggles(node: Any, path: tuple[str, ...] = ()) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "enabled" and isinstance(value, bool):
                found.append(".".join(path))
            else:
                found += toggles(value, (*path, key))
    return found


TOGGLES = toggles(VALUES)


def setting(path: str, *, value: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": value}
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


def objects(values: dict[str, Any], apis: tuple[str, ...] = APIS) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in render_chart(values, api_versions=apis)}


def test_the_walk_finds_the_toggles():
    assert len(TOGGLES) >= 20
    for known in ("dashboards", "alerts", "keda", "flower", "api.ingress", "janitor.operator"):
        assert known in TOGGLES


@pytest.mark.parametrize("path", TOGGLES)
def test_a_toggle_renders_its_objects_or_fails_with_a_message(path):
    off = objects(setting(path, value=False))
    try:
        on = objects(setting(path, value=True))
    except RenderError as exc:
        component = path.split(".")[-1]
        assert component in str(exc), f"{path}=true fails without naming it: {exc}"
        return
    assert on - off, f"{path}=true renders nothing that {path}=false does not"


@pytest.mark.parametrize(
    ("path", "api", "kind", "fallback"),
    [
        ("keda", KEDA, "ScaledObject", "HorizontalPodAutoscaler"),
        ("metrics.serviceMonitor", MONITORING, "PodMonitor", "prometheus.io/scrape"),
    ],
)
def test_a_toggle_whose_api_is_missing_renders_its_fallback_and_says_so(
    path, api, kind, fallback, tmp_path
):
    with_api = render_chart(setting(path, value=True), api_versions=(api,))
    assert any(d["kind"] == kind for d in with_api)
    without = render_chart(setting(path, value=True))
    assert not any(d["kind"] == kind for d in without)
    assert fallback in json.dumps(without)
    said = notes(setting(path, value=True), tmp_path)  # a client dry run: no such API
    assert f"{path}.enabled" in said and api in said, said
    assert f"{path}.enabled" not in notes(setting(path, value=False), tmp_path)
