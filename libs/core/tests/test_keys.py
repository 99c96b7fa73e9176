"""Redis Cluster refuses a script whose keys hash to different slots (CROSSSLOT): every key
list a Lua script is called with must share one slot. The lists below are the ones the code
passes (buffer, flush, recount, locks, beat, the janitor's sweeps); every script in the tree is
either listed here or named as single-Redis with its reason (keys.py says the same)."""

import pytest
import redis

from celery_stack_core import keys
from celery_stack_devstack.cluster import SINGLE_REDIS, ScriptSlots, scripts, slot


def test_slot_matches_redis():
    # Values from the Redis Cluster specification / CLUSTER KEYSLOT.
    assert slot("foo") == 12182
    assert slot("{user1000}.following") == slot("{user1000}.followers")


sk = keys.ShardKeys("post", "views", 3)
SCRIPT_KEYS = {
    "counter_ingest": [sk.live, sk.live_since],
    "counter_ingest_many": [sk.live, sk.live_since],
    "read_inflight": [sk.inflight],
    "claim": [sk.live, sk.inflight, sk.batch, sk.live_since, sk.inflight_since],
    "ack": [sk.inflight, sk.batch, sk.inflight_since],
    "dirty_claim": [keys.DIRTY, keys.DIRTY_CLAIMED],
    "return_claim": [keys.DIRTY, keys.DIRTY_CLAIMED],
    "lock_acquire": [keys.lock("job"), keys.owner_locks("o"), keys.owner_heartbeat("o")],
    "lock_renew": [keys.lock("job"), keys.owner_heartbeat("o")],
    "lock_release": [keys.lock("job"), keys.owner_locks("o")],
    # the janitor's: a leaked lock (and the release counted beside it), a gone owner's records
    # (and the locks its set names)
    "release_lock": [keys.lock("job"), keys.LOCK_STATS],
    "drop_owner": [keys.owner_locks("o"), keys.owner_heartbeat("o"), keys.lock("job")],
    "lease_acquire": [keys.BEAT_LEASE, keys.BEAT_EPOCH],
    "lease_renew": [keys.BEAT_LEASE],
    "lease_release": [keys.BEAT_LEASE, keys.BEAT_LEADER],  # one call each; the same slot
    "fence_raise": [keys.BEAT_EPOCH],
    "claim_slot": [keys.BEAT_EPOCH, keys.beat_slot("e", 1), keys.BEAT_LAST, keys.BEAT_PENDING],
    "pending_due": [keys.BEAT_EPOCH, keys.BEAT_PENDING],
}


@pytest.mark.parametrize("script", sorted(SCRIPT_KEYS))
def test_a_scripts_keys_share_one_slot(script):
    assert len({slot(k) for k in SCRIPT_KEYS[script]}) == 1, SCRIPT_KEYS[script]


def test_different_owners_locks_share_the_slot_too():
    assert slot(keys.owner_locks("a")) == slot(keys.owner_locks("b")) == slot(keys.lock("x"))


def test_every_script_in_the_tree_is_checked_or_named_single_redis():
    found = set(scripts())
    assert found
    assert not set(SCRIPT_KEYS) & set(SINGLE_REDIS)
    assert found == set(SCRIPT_KEYS) | set(SINGLE_REDIS), (
        f"unchecked: {sorted(found - set(SCRIPT_KEYS) - set(SINGLE_REDIS))}; "
        f"gone: {sorted((set(SCRIPT_KEYS) | set(SINGLE_REDIS)) - found)}"
    )


def test_the_plugin_catches_a_script_called_across_slots(settings):
    # What the devstack plugin installs around every test: a call whose keys span slots is
    # recorded (the test then fails); a single-Redis script of the sweep is let through.
    client = redis.Redis.from_url(settings.stores.redis_url)
    try:
        with ScriptSlots().installed() as slots:
            release = scripts()["lock_release"].read_text()
            client.eval(release, 2, "{a}:x", "{a}:y", "me")
            assert slots.crossing == []
            client.eval(release, 2, "{a}:x", "{b}:y", "me")
            assert len(slots.crossing) == 1 and "['{a}:x', '{b}:y']" in slots.crossing[0]
            client.eval("return 1", 2, "{a}:x", "{b}:y")  # not ours (kombu runs its own)
            assert len(slots.crossing) == 1
            apply_results = scripts()["apply_results"].read_text()
            client.eval(apply_results, 2, "celery-task-meta-1", "celery-task-meta-2", "ee", 60)
            assert len(slots.crossing) == 1
    finally:
        client.close()
