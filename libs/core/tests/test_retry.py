import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from celery_stack_core.retry import is_transient, with_retry


async def test_retries_transient_then_succeeds():
    calls = 0

    async def op():
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("reset")
        return "ok"

    assert await with_retry(op, what="t", base=0.001) == "ok"
    assert calls == 3


async def test_does_not_retry_a_bug():
    calls = 0

    async def op():
        nonlocal calls
        calls += 1
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await with_retry(op, what="t", base=0.001)
    assert calls == 1


async def test_serialization_failure_from_postgres_is_transient(engine):
    with pytest.raises(DBAPIError) as info:
        async with engine.begin() as conn:
            await conn.execute(text("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$"))
    assert is_transient(info.value)
    with pytest.raises(DBAPIError) as info:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1/0"))
    assert not is_transient(info.value)
