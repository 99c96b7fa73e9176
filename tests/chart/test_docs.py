"""docs/operator-guide.md covers what issue 5 requires an operator to know."""

from __future__ import annotations

from chartlib import ROOT

GUIDE = (ROOT / "docs" / "operator-guide.md").read_text()


def test_sections():
    for heading in (
        "## Install",
        "### existingSecret",
        "## Redis: the settings the loss bounds need",
        "### The cluster-autoscaler caveat",
        "## Upgrade",
    ):
        assert heading in GUIDE, heading


def test_loss_bounds_and_redis_settings():
    for text in (
        "appendfsync always",
        "appendfsync everysec",
        "about one second",
        "maxmemory-policy noeviction",
        "--max-graceful-termination-sec",
        "values-reference.md",
    ):
        assert text in GUIDE, text
