"""The execution claim of beat-sent tasks (celery_stack_core.once) on a real Redis; the whole
path through a real worker is tests/e2e/test_beat_failover.py::test_a_slot_sent_twice_executes_once."""

import redis as sync_redis

from celery_stack_core import once


def test_first_delivery_runs_a_resend_does_not(redis, settings):
    client = sync_redis.Redis.from_url(settings.stores.redis_url, decode_responses=True)
    key = once.claim_key("beat:flush:1000", 0)
    assert once.claim(client, key, redelivered=False)
    assert not once.claim(client, key, redelivered=False)  # a resend while it runs
    assert 3600 < client.ttl(key) <= once.CLAIM_TTL_S  # outlives the 60 s resend window
    once._finished(client, key, "t")
    assert not once.claim(client, key, redelivered=False)  # a resend after it ran
    assert not once.claim(client, key, redelivered=True)  # even flagged redelivered
    client.close()


def test_a_redelivery_takes_over_a_run_that_died(redis, settings):
    client = sync_redis.Redis.from_url(settings.stores.redis_url, decode_responses=True)
    key = once.claim_key("beat:flush:2000", 0)
    assert once.claim(client, key, redelivered=False)  # ... and its worker is killed -9
    assert not once.claim(client, key, redelivered=False)  # beat's resend: refused
    assert once.claim(client, key, redelivered=True)  # the broker's redelivery: runs
    client.close()


def test_a_retry_is_a_new_execution():
    assert once.claim_key("beat:x:1", 0) != once.claim_key("beat:x:1", 1)
