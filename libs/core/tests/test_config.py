import json

import pytest
from pydantic import ValidationError

from celery_stack_core.config import DEV_ADMIN_TOKEN, Settings, hash_token


@pytest.fixture(autouse=True)
def _no_settings_env(monkeypatch):
    """These tests read Settings from scratch: drop what the session's fixtures exported."""
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)


def test_defaults_run_locally_with_dev_tokens():
    s = Settings()
    names = {t.name for t in s.api.tokens}
    assert names == {"dev-user", "dev-admin"}
    assert s.broker_url == s.stores.redis_url == s.result_backend


def test_visibility_timeout_must_exceed_every_hard_limit():
    with pytest.raises(ValidationError, match="CELERY_VISIBILITY_TIMEOUT"):
        Settings(CELERY_VISIBILITY_TIMEOUT=300, SCANS_TIME_LIMIT=300, SCANS_SOFT_TIME_LIMIT=200)
    Settings(CELERY_VISIBILITY_TIMEOUT=301, SCANS_TIME_LIMIT=300, SCANS_SOFT_TIME_LIMIT=200)


def test_soft_limit_below_hard_limit():
    with pytest.raises(ValidationError, match="SOFT_TIME_LIMIT"):
        Settings(COUNTERS_SOFT_TIME_LIMIT=60, COUNTERS_TIME_LIMIT=60)


def test_production_needs_tokens_and_refuses_dev_tokens():
    with pytest.raises(ValidationError, match="API_TOKENS must be set"):
        Settings(ENVIRONMENT="production")
    dev = [{"name": "x", "sha256": hash_token(DEV_ADMIN_TOKEN), "scopes": ["admin"]}]
    with pytest.raises(ValidationError, match="development tokens"):
        Settings(ENVIRONMENT="production", API_TOKENS=json.dumps(dev))
    ok = [{"name": "svc", "sha256": hash_token("s3cret-token-value"), "scopes": ["user"]}]
    s = Settings(ENVIRONMENT="production", API_TOKENS=json.dumps(ok))
    assert s.api.tokens[0].name == "svc"


def test_tokens_from_env(monkeypatch):
    spec = [{"name": "svc", "sha256": hash_token("abc"), "scopes": ["user", "admin"]}]
    monkeypatch.setenv("API_TOKENS", json.dumps(spec))
    assert Settings().api.tokens[0].scopes == ["user", "admin"]
    monkeypatch.setenv("API_TOKENS", '[{"name": "bad", "sha256": "plaintext", "scopes": ["user"]}]')
    with pytest.raises(ValidationError):
        Settings()


def test_groups_read_the_same_variables(monkeypatch):
    monkeypatch.setenv("COUNTER_SHARDS", "16")
    monkeypatch.setenv("SCANS_PREFETCH", "3")
    s = Settings()
    assert s.counters.shards == 16 and s.queue("scans").prefetch == 3
    assert Settings(COUNTER_SHARDS=2).counters.shards == 2  # keyword beats the environment
    assert s.replace(BEAT_TICK=0.25).beat.tick == 0.25 and s.beat.tick == 0.5


def test_unknown_variable_is_refused():
    with pytest.raises(ValidationError, match="unknown setting 'COUNTER_SHARD'"):
        Settings(COUNTER_SHARD=2)


def test_env_round_trips(monkeypatch):
    s = Settings(COUNTER_SHARDS=3, SCANNER_ALLOW_PRIVATE_CIDRS="127.0.0.1/32", SCANS_QUEUES="a,b")
    for key, value in s.env().items():
        monkeypatch.setenv(key, value)
    assert Settings() == s


def test_env_leaves_empty_values_out():
    """prometheus_client treats a set-but-empty PROMETHEUS_MULTIPROC_DIR as a directory (the
    current one) and litters it with .db files."""
    env = Settings().env()
    assert "PROMETHEUS_MULTIPROC_DIR" not in env and "CELERY_BROKER_URL" not in env
