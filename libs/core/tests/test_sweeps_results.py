"""The orphaned-results sweep at more than one step, on real Redis and PostgreSQL: its steps
read ahead of the checks (results.py), so these worlds span hundreds of SCAN steps.

- every Redis command it sends (MONITOR) does at most JANITOR_SCAN_COUNT keys' work: SCAN with
  that COUNT, apply calls with at most that many keys, never KEYS;
- the overlapped real run does exactly what the dry run reported, logs every action (one line
  per batch naming each key), and a run stopped by its key budget resumes where it stopped;
- compare-before-delete: a result re-written between the SCAN step and the delete is kept;
- the bulk parse of a step (one findall) agrees with parse_task_id on every id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert

from celery_stack_core.lua import lua
from celery_stack_core.models import Scan
from celery_stack_core.sweeps import results
from celery_stack_core.sweeps.base import SweepContext
from celery_stack_core.sweeps.taskids import PACKED_ROW_RESULTS, RESULT_PREFIX, parse_task_id

N = 1500  # result keys; with JANITOR_SCAN_COUNT=20 about 75 SCAN steps
STEP = 20


def scan_key(i: int) -> str:
    return f"{RESULT_PREFIX}scan-{uuid.UUID(int=i + 1)}-1"


async def seed(engine, redis) -> tuple[set[str], set[str]]:
    """N scan results, every 10th orphaned, every 7th without a TTL, plus ids without a row.
    Returns (the orphans, the keys that must get a TTL)."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(Scan.__table__),
            [
                {"id": uuid.UUID(int=i + 1), "owner": "u", "domain": "example.com"}
                for i in range(N)
                if i % 10
            ],
        )
    value = json.dumps({"status": "SUCCESS"})
    orphans, no_ttl = set(), set()
    pipe = redis.pipeline(transaction=False)
    for i in range(N):
        pipe.set(scan_key(i), value, ex=None if i % 7 == 0 else 600)
        if i % 10 == 0:
            orphans.add(scan_key(i))
        elif i % 7 == 0:
            no_ttl.add(scan_key(i))
    job = f"{RESULT_PREFIX}janitor-job-{uuid.uuid4()}"  # no maintenance_jobs row: an orphan
    for key in (f"{RESULT_PREFIX}beat:flush:1", f"{RESULT_PREFIX}other", job):
        pipe.set(key, value)  # no TTL
    await pipe.execute()
    orphans.add(job)
    no_ttl.update({f"{RESULT_PREFIX}beat:flush:1", f"{RESULT_PREFIX}other"})
    return orphans, no_ttl


async def test_steps_bounded_dry_run_equals_overlapped_real_run(settings, clean_db, redis, caplog):
    orphans, no_ttl = await seed(clean_db, redis)
    ctx = SweepContext(redis, clean_db, settings.replace(JANITOR_SCAN_COUNT=STEP), keep_all=True)

    dry = await results.sweep(ctx, dry_run=True)
    assert dry.complete and dry.examined == N + 3
    assert {a.target for a in dry.actions if a.action == "delete"} == orphans
    assert {a.target for a in dry.actions if a.action == "expire"} == no_ttl

    # loaded now, so MONITOR does not see a first apply call twice (NOSCRIPT, then again)
    await redis.script_load(lua(results.__file__, "apply_results"))
    commands: list[str] = []
    async with redis.monitor() as monitor:

        async def listen() -> None:
            async for seen in monitor.listen():
                if seen["command"] == "ECHO end":
                    return
                commands.append(seen["command"])

        listening = asyncio.create_task(listen())
        with caplog.at_level(logging.INFO, logger="celery_stack.janitor"):
            real = await results.sweep(ctx, dry_run=False)
        await redis.echo("end")
        await asyncio.wait_for(listening, 30)

    assert real.outcome() == dry.outcome()
    assert not await redis.exists(*orphans)
    for key in no_ttl:
        assert await redis.ttl(key) > 0, key
    logged = [t for r in caplog.records if r.msg == "janitor actions" for t in r.targets]
    assert sorted(logged) == sorted(orphans | no_ttl), "an action missing from the log"

    scans = [c.split() for c in commands if c.upper().startswith("SCAN ")]
    assert scans and all(c[c.index("COUNT") + 1] == str(STEP) for c in scans)
    assert not [c for c in commands if c.upper().startswith("KEYS")]
    applies = [
        c.split() for c in commands if c.upper().startswith("EVALSHA") and c.split()[2] != "0"
    ]
    assert applies, "no apply call seen"
    assert max(int(c[2]) for c in applies) <= STEP  # numkeys of each apply_results.lua call
    assert sum(int(c[2]) for c in applies) == len(orphans | no_ttl)

    again = await results.sweep(ctx, dry_run=False)
    assert again.found == 0 and again.complete


async def test_a_run_stopped_by_its_budget_resumes_at_its_cursor(settings, clean_db, redis):
    orphans, no_ttl = await seed(clean_db, redis)
    small = settings.replace(JANITOR_SCAN_COUNT=STEP, JANITOR_MAX_KEYS=400)
    ctx = SweepContext(redis, clean_db, small, keep_all=True)
    done: set[str] = set()
    runs = 0
    while True:
        report = await results.sweep(ctx, dry_run=False)
        runs += 1
        done |= {a.target for a in report.actions}
        assert report.examined < 400 + 3 * STEP  # the budget, and the step that reached it
        if report.complete:
            break
    assert runs > 1
    assert done == orphans | no_ttl


async def test_a_result_rewritten_after_the_scan_step_is_not_deleted(settings, clean_db, redis):
    gone = f"{RESULT_PREFIX}scan-{uuid.uuid4()}-1"
    await redis.set(gone, json.dumps({"status": "STARTED"}), ex=600)
    ctx = SweepContext(redis, clean_db, settings, keep_all=True)
    rec = results.Recorder(ctx, results.NAME, dry_run=False)
    step = await results._read(ctx, 0)
    async with clean_db.connect() as conn:
        plan = await results._plan(conn, [step])
    assert plan.delete == [gone]
    await asyncio.sleep(0.01)
    await redis.set(gone, json.dumps({"status": "SUCCESS"}), ex=600)  # re-written: new expiry
    await results._execute(ctx, rec, plan)
    assert json.loads(await redis.get(gone))["status"] == "SUCCESS"
    assert rec.report.skipped["changed"] == 1 and rec.report.done == 0

    step = await results._read(ctx, 0)  # looked at again, unchanged until the delete: deleted
    async with clean_db.connect() as conn:
        plan = await results._plan(conn, [step])
    await results._execute(ctx, rec, plan)
    assert not await redis.exists(gone) and rec.report.done == 1


task_ids = st.one_of(
    st.builds(lambda u, n: f"scan-{u}-{n}", st.uuids(), st.integers(0, 10**6)),
    st.builds(lambda u: f"janitor-job-{u}", st.uuids()),
    st.builds(lambda u: f"scan-{str(u).upper()}-1", st.uuids()),
    st.builds(lambda u: f"scan-{u}", st.uuids()),
    st.text(st.characters(blacklist_characters="\n"), max_size=60),
    st.builds(lambda u, t: f"scan-{u}-{t}", st.uuids(), st.text(max_size=4)),
    st.builds(lambda u, t: f"janitor-job-{u}{t}", st.uuids(), st.text(max_size=3)),
)


@given(ids=st.lists(task_ids, max_size=20), expiry=st.integers(-1, 2**45))
def test_the_bulk_parse_agrees_with_parse_task_id(ids, expiry):
    packed = "\n".join(f"{RESULT_PREFIX}{t} {expiry}" for t in ids if "\n" not in t)
    found = {key: (s or j) for key, s, j, _ in PACKED_ROW_RESULTS.findall(packed)}
    for t in ids:
        if "\n" in t:
            continue
        ref = parse_task_id(t)
        if ref.row_id is None:
            assert RESULT_PREFIX + t not in found
        else:
            assert found[RESULT_PREFIX + t] == str(ref.row_id), t
