import json

import pytest
from pydantic import ValidationError

from celery_stack_core.config import DEV_ADMIN_TOKEN, Settings, hash_token


@pytest.fixture(autouse=True)
def _no_settings_env(monkeypatch):
    """These tests read Settings from scratch: drop what the session's fixtures exported."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def test_defaults_run_locally_with_dev_tokens():
    s = Settings(_env_file=None)
    names = {t.name for t in s.API_TOKENS}
    assert names == {"dev-user", "dev-admin"}
    assert s.broker_url == s.REDIS_URL == s.result_backend


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
    assert s.API_TOKENS[0].name == "svc"


def test_tokens_from_env(monkeypatch):
    spec = [{"name": "svc", "sha256": hash_token("abc"), "scopes": ["user", "admin"]}]
    monkeypatch.setenv("API_TOKENS", json.dumps(spec))
    assert Settings().API_TOKENS[0].scopes == ["user", "admin"]
    monkeypatch.setenv("API_TOKENS", '[{"name": "bad", "sha256": "plaintext", "scopes": ["user"]}]')
    with pytest.raises(ValidationError):
        Settings()
