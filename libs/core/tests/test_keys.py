"""Redis Cluster refuses a script whose keys hash to different slots (CROSSSLOT): every key
list a Lua script is called with must share one slot. The lists below are the ones the code
passes (buffer, flush, recount, locks, beat)."""

import pytest

from celery_stack_core import keys


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, the Redis Cluster key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(key: str) -> int:
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key.encode()) % 16384


def test_slot_matches_redis():
    # Values from the Redis Cluster specification / CLUSTER KEYSLOT.
    assert slot("foo") == 12182
    assert slot("{user1000}.following") == slot("{user1000}.followers")


sk = keys.ShardKeys("post", "views", 3)
SCRIPT_KEYS = {
    "counter_ingest": [sk.live, sk.live_since],
    "claim": [sk.live, sk.inflight, sk.batch, sk.live_since, sk.inflight_since],
    "ack": [sk.inflight, sk.batch, sk.inflight_since],
    "dirty_claim": [keys.DIRTY, keys.DIRTY_CLAIMED],
    "lock_acquire": [keys.lock("job"), keys.owner_locks("o"), keys.owner_heartbeat("o")],
    "lock_renew": [keys.lock("job"), keys.owner_heartbeat("o")],
    "lock_release": [keys.lock("job"), keys.owner_locks("o")],
    "release_lock": [keys.lock("job"), keys.LOCK_STATS],  # the janitor's, sweeps/locks.py
    "lease_acquire": [keys.BEAT_LEASE, keys.BEAT_EPOCH],
    "claim_slot": [keys.BEAT_EPOCH, keys.beat_slot("e", 1), keys.BEAT_LAST, keys.BEAT_PENDING],
    "pending_due": [keys.BEAT_EPOCH, keys.BEAT_PENDING],
}


@pytest.mark.parametrize("script", sorted(SCRIPT_KEYS))
def test_a_scripts_keys_share_one_slot(script):
    assert len({slot(k) for k in SCRIPT_KEYS[script]}) == 1, SCRIPT_KEYS[script]


def test_different_owners_locks_share_the_slot_too():
    assert slot(keys.owner_locks("a")) == slot(keys.owner_locks("b")) == slot(keys.lock("x"))
