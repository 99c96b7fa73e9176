"""NOTES.txt tells the user how to reach the API and check the stack."""

from __future__ import annotations

from chartlib import notes


def test_notes_default(tmp_path):
    text = notes({}, tmp_path)
    assert "helm test cs -n celery-stack" in text
    assert "port-forward svc/cs-celery-stack-api 8000:8000" in text
    assert "curl http://127.0.0.1:8000/readyz" in text
    assert "get lease cs-celery-stack-beat" in text
    assert "ADMIN_TOKEN" in text
    assert "appendfsync always" in text
    for q in ("counters", "scans", "maintenance"):
        assert f"cs-celery-stack-worker-{q}: -Q {q}" in text


def test_notes_with_ingress_and_existing_secrets(tmp_path):
    text = notes(
        {
            "api": {
                "ingress": {
                    "enabled": True,
                    "hosts": ["api.example.com"],
                    "tls": [{"hosts": ["api.example.com"]}],
                }
            },
            "redis": {"existingSecret": "r"},
            "database": {"existingSecret": "d"},
            "auth": {"existingSecret": "a"},
        },
        tmp_path,
    )
    assert "https://api.example.com/healthz" in text
    assert "port-forward" not in text
    assert "ADMIN_TOKEN" not in text and "appendfsync" not in text
