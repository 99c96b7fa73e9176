"""Render tests of issue 12 ("deployable for real"): KEDA from real Redis URLs and its scaling
math, GitOps-stable renders, per-component ServiceAccounts, pools the image can run, network
policy peers, PDB eviction of unhealthy pods, and the operator extension points."""

from __future__ import annotations

import base64
import math
import re
from typing import Any

import jmespath
import pytest
from chartlib import KEDA, RELEASE, RenderError, one, render_chart

FULL = f"{RELEASE}-celery-stack"
REAL_URL = "rediss://default:s3cr%40t@redis.example:6380/2"


def render_error(values: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(RenderError) as info:
        render_chart(values, **kw)
    return str(info.value)


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    raw = one(docs, "Secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in raw.items()}


def desired_replicas(so: dict[str, Any], metrics: dict[str, float]) -> int:
    """KEDA's documented semantics: without scalingModifiers every trigger is its own HPA metric
    and the HPA takes the largest ceil(value / target); with them, one composite metric
    (the formula over the triggers' values by name) against the modifiers' target."""
    spec = so["spec"]
    mods = spec.get("advanced", {}).get("scalingModifiers")
    names = [t.get("name") or f"t{i}" for i, t in enumerate(spec["triggers"])]
    if mods:
        formula = mods["formula"]
        assert re.fullmatch(r"[\w\s+*/().,]+", formula), formula  # arithmetic, max, names
        scope = {**dict.fromkeys(names, 0.0), **metrics}
        value = eval(formula, {"__builtins__": {}, "max": max}, scope)
        return math.ceil(value / float(mods["target"]))
    per = []
    for name, trig in zip(names, spec["triggers"], strict=True):
        target = float(trig["metadata"].get("listLength") or trig["metadata"]["threshold"])
        per.append(math.ceil(metrics.get(name, 0) / target))
    return max(per)


class TestKedaRedis:
    def test_real_url_gives_db_tls_decoded_password_and_username(self):
        docs = render_chart({"redis": {"url": REAL_URL}}, api_versions=(KEDA,))
        so = one(docs, "ScaledObject", f"{FULL}-worker-counters")
        for trig in jmespath.search("spec.triggers[?type=='redis']", so):
            assert trig["metadata"]["databaseIndex"] == "2"
            assert trig["metadata"]["enableTLS"] == "true"
        data = secret_data(docs, f"{FULL}-env")
        assert data["REDIS_ADDRESS"] == "redis.example:6380"
        assert data["REDIS_PASSWORD"] == "s3cr@t"
        assert data["REDIS_USERNAME"] == "default"
        assert data["REDIS_URL"] == REAL_URL  # the services get the URL untouched
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        params = {r["parameter"]: r["key"] for r in ta["spec"]["secretTargetRef"]}
        assert params == {
            "address": "REDIS_ADDRESS",
            "username": "REDIS_USERNAME",
            "password": "REDIS_PASSWORD",
        }

    @pytest.mark.parametrize(
        ("url", "address", "db", "tls", "user", "password"),
        [
            ("redis://redis-master:6379/0", "redis-master:6379", "0", "false", None, None),
            ("redis://:p%3Ap%25@r", "r:6379", "0", "false", None, "p:p%"),
            ("rediss://u@r:7000", "r:7000", "0", "true", "u", None),
        ],
    )
    def test_url_forms(self, url, address, db, tls, user, password):
        docs = render_chart({"redis": {"url": url}}, api_versions=(KEDA,))
        data = secret_data(docs, f"{FULL}-env")
        assert data["REDIS_ADDRESS"] == address
        assert data.get("REDIS_USERNAME") == user and data.get("REDIS_PASSWORD") == password
        so = one(docs, "ScaledObject", f"{FULL}-worker-scans")
        assert so["spec"]["triggers"][0]["metadata"]["databaseIndex"] == db
        assert so["spec"]["triggers"][0]["metadata"]["enableTLS"] == tls
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        params = {r["parameter"] for r in ta["spec"]["secretTargetRef"]}
        expected = {"address"} | ({"username"} if user else set())
        assert params == expected | ({"password"} if password else set())

    @pytest.mark.parametrize(
        "keda_redis", [{"databaseIndex": 0}, {"enableTLS": False}], ids=["db", "tls"]
    )
    def test_explicit_values_contradicting_the_url_fail(self, keda_redis):
        err = render_error(
            {"redis": {"url": REAL_URL}, "keda": {"redis": keda_redis}}, api_versions=(KEDA,)
        )
        assert "contradicts" in err and "redis.url" in err

    def test_agreeing_explicit_values_render(self):
        values = {"redis": {"url": REAL_URL}, "keda": {"redis": {"databaseIndex": 2}}}
        assert render_chart(values, api_versions=(KEDA,))

    def test_existing_secret_uses_explicit_values_and_keys(self):
        docs = render_chart(
            {
                "redis": {"existingSecret": "prod-redis"},
                "keda": {"redis": {"databaseIndex": 3, "enableTLS": True, "usernameKey": "user"}},
            },
            api_versions=(KEDA,),
        )
        trig = one(docs, "ScaledObject", f"{FULL}-worker-counters")["spec"]["triggers"][0]
        assert trig["metadata"]["databaseIndex"] == "3"
        assert trig["metadata"]["enableTLS"] == "true"
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
        assert refs == {
            "address": ("prod-redis", "REDIS_ADDRESS"),
            "username": ("prod-redis", "user"),
            "password": ("prod-redis", "REDIS_PASSWORD"),
        }

    def test_non_ascii_escape_is_refused_not_mis_decoded(self):
        assert "non-ASCII" in render_error({"redis": {"url": "redis://:%C3%A9@r:6379/0"}})


class TestKedaScalingMath:
    """KEDA gives the HPA one metric per trigger and the HPA takes the max: per-list triggers
    would under-scale a backlog spread over the priority lists by up to their count."""

    def test_backlog_over_priority_lists_is_summed(self):
        so = one(render_chart(api_versions=(KEDA,)), "ScaledObject", f"{FULL}-worker-counters")
        names = [t["name"] for t in so["spec"]["triggers"]]
        assert len(names) == 4 and len(set(names)) == 4
        # 20 waiting in each of 4 lists, target 20 per replica: 4 replicas, not 1
        assert desired_replicas(so, dict.fromkeys(names, 20)) == 4
        assert desired_replicas(so, {names[0]: 100}) == 5

    def test_in_flight_guard_is_part_of_the_one_metric(self):
        values = {
            "queues": {"scans": {"concurrency": 2, "autoscaling": {"inFlightQuery": "q"}}},
            "keda": {"prometheusServerAddress": "http://prom:9090"},
        }
        so = one(render_chart(values, api_versions=(KEDA,)), "ScaledObject", f"{FULL}-worker-scans")
        lists = [t["name"] for t in so["spec"]["triggers"] if t["type"] == "redis"]
        # nothing waiting, 12 tasks running at concurrency 2: 6 replicas stay
        assert desired_replicas(so, {**dict.fromkeys(lists, 0), "inflight": 12}) == 6
        # a backlog of 5 x 4 lists at listLength 5 with 2 running: the backlog wins
        assert desired_replicas(so, {**dict.fromkeys(lists, 5), "inflight": 2}) == 4

    def test_a_queue_with_several_lists_sums_them_all(self):
        values = {
            "queues": {
                "reports": {
                    "command": "celery-stack-worker-maintenance",
                    "queues": ["reports", "reports-bulk"],
                }
            }
        }
        so = one(
            render_chart(values, api_versions=(KEDA,)), "ScaledObject", f"{FULL}-worker-reports"
        )
        names = [t["name"] for t in so["spec"]["triggers"]]
        assert len(names) == 8
        assert desired_replicas(so, dict.fromkeys(names, 10)) == 4  # 80 / 20
