"""The outbox relay on real PostgreSQL and Redis: sends what was left unsent, once, with FOR
UPDATE SKIP LOCKED (two relays never send the same row), and leaves rows unsent while the
broker is down."""

import asyncio
import json
import uuid

from sqlalchemy import insert, text

from celery_stack_core import metrics, outbox
from celery_stack_core.celery_app import make_celery
from celery_stack_core.db import make_engine
from celery_stack_core.models import Scan
from celery_stack_janitor.gauges import record_gauges
from celery_stack_janitor.relay import relay_all


async def write_unsent(engine, n, prefix="t"):
    async with engine.begin() as conn:
        return [
            await outbox.add(
                conn, task_name="scans.run", task_id=f"{prefix}-{i}", args=[f"id{i}", 1]
            )
            for i in range(n)
        ]


async def unsent(engine):
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
        ).scalar()


async def published_ids(redis):
    return [json.loads(m)["headers"]["id"] for m in await redis.lrange("scans", 0, -1)]


async def test_relay_sends_unsent_rows_once(settings, clean_db, redis):
    await write_unsent(clean_db, 5)
    app = make_celery(settings)
    # younger than min_age: left to the API that wrote them
    assert await relay_all(clean_db, app, batch_size=100, min_age=60) == 0
    assert await unsent(clean_db) == 5
    assert await relay_all(clean_db, app, batch_size=2, min_age=0) == 5
    assert sorted(await published_ids(redis)) == [f"t-{i}" for i in range(5)]
    assert await unsent(clean_db) == 0
    assert await relay_all(clean_db, app, batch_size=100, min_age=0) == 0
    assert len(await published_ids(redis)) == 5
    assert metrics.OUTBOX_BACKLOG._value.get() == 0


async def test_two_relays_never_send_the_same_row(settings, clean_db, redis):
    await write_unsent(clean_db, 300)
    engines = [make_engine(settings) for _ in range(3)]
    app = make_celery(settings)
    try:
        results = await asyncio.gather(
            *(
                outbox.relay(e, outbox.celery_publisher(app), batch_size=40, min_age=0)
                for e in engines
                for _ in range(4)
            )
        )
    finally:
        for e in engines:
            await e.dispose()
    sent = sum(r.sent for r in results)
    ids = await published_ids(redis)
    assert len(ids) == len(set(ids)) == sent
    # whatever those rounds left, one more pass sends; every row exactly once overall
    await relay_all(clean_db, app, batch_size=500, min_age=0)
    ids = await published_ids(redis)
    assert len(ids) == len(set(ids)) == 300


async def test_broker_down_leaves_rows_unsent_with_the_error(
    settings, clean_db, free_tcp_port, caplog
):
    await write_unsent(clean_db, 3)
    dead = outbox.fail_fast(
        make_celery(settings.replace(REDIS_URL=f"redis://127.0.0.1:{free_tcp_port}/0"))
    )
    res = await outbox.relay(clean_db, outbox.celery_publisher(dead), batch_size=10, min_age=0)
    assert (res.sent, res.failed) == (0, 1)  # stops at the first failure: the broker is down
    async with clean_db.connect() as conn:
        rows = (
            await conn.execute(text("SELECT attempts, last_error, sent_at FROM outbox ORDER BY id"))
        ).all()
    assert rows[0].attempts == 1 and "Connection refused" in rows[0].last_error
    assert all(r.sent_at is None for r in rows)
    # and in the log, with the row it could not send
    (failed,) = [r for r in caplog.records if r.message.startswith("outbox relay could not")]
    assert failed.outbox_id and failed.task_id and failed.error


async def test_outbox_add_refuses_an_unroutable_task(clean_db):
    import pytest

    from celery_stack_core.celery_app import UnroutedTask

    with pytest.raises(UnroutedTask):
        async with clean_db.begin() as conn:
            await outbox.add(conn, task_name="nowhere.task", task_id="x", args=[])
    assert await unsent(clean_db) == 0


async def test_backlog_gauges_show_what_is_waiting(settings, clean_db, redis):
    await write_unsent(clean_db, 4)
    async with clean_db.begin() as conn:
        for status in ("running", "running", "succeeded"):
            await conn.execute(
                insert(Scan.__table__).values(
                    id=uuid.uuid4(), owner="u", domain="example.com", status=status
                )
            )
    await asyncio.sleep(0.3)
    assert await relay_all(clean_db, make_celery(settings), batch_size=10, min_age=60) == 0
    await record_gauges(clean_db)
    assert metrics.OUTBOX_BACKLOG._value.get() == 4
    assert metrics.OUTBOX_OLDEST_AGE._value.get() >= 0.3
    # live states only, each counted (a finished scan is counted as it finishes, not here)
    assert metrics.SCANS_BY_STATUS.labels("queued")._value.get() == 0
    assert metrics.SCANS_BY_STATUS.labels("running")._value.get() == 2


def test_relay_min_age_default_exceeds_the_broker_publish_timeout():
    """A publish by the API may block up to the broker socket timeout after COMMIT; a relay that
    took the row earlier would send it a second time."""
    from celery_stack_core.config import OutboxSettings, Settings

    min_age = OutboxSettings.model_fields["relay_min_age"].default
    app = make_celery(Settings())
    opts = app.conf.broker_transport_options
    assert min_age > max(opts["socket_timeout"], opts["socket_connect_timeout"])
