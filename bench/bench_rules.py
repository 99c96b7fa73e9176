"""Rules: our expiry rule against field report 003's expiry job, under a concurrent writer.

A coupon table of ROWS rows, ELIGIBLE of them past their expiry (spread over the table);
both expire exactly those rows, on the same servers (PostgreSQL with fsync on):

- ours: the shipped `check-expired-coupons` rule (transition) with its shipped batch size
  (rules/defaults.py; BENCH_RULES_BATCH overrides it), each
  `UPDATE ... FROM (SELECT ... ORDER BY expires_at LIMIT n FOR UPDATE SKIP LOCKED)` in its own
  transaction;
- report 003's style: the SQLAlchemy ORM loads every expired coupon, sets status and
  expired_at on each object (one UPDATE per row at flush), one commit at the end;
- the bare statement, the floor: one `UPDATE coupons ... WHERE status = 'active' AND
  expires_at <= now()` of every due row in one transaction (nothing that changes these rows can
  be faster; it also holds every row's lock until its single COMMIT).

Meanwhile a writer in another process updates random coupons one at a time (autocommit) as an
application would; its statement latency is the lock wait it suffered (the statement itself
takes well under a millisecond). Each run is checked: exactly the eligible rows expired.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.common import BenchEnv, pg_dsn, table, verdict

ROWS = int(os.environ.get("BENCH_RULES_ROWS", "1000000"))
ELIGIBLE_SHARE = 0.3
BATCH = int(os.environ.get("BENCH_RULES_BATCH", "0"))  # 0: the shipped batch size
TARGET_RATIO = 20.0
TARGET_WRITER_WAIT_MS = 100.0
COMPARISONS = {
    "bare_ratio": ("bare_rows_per_s", "naive_rows_per_s", "bare UPDATE rows/s over report 003's"),
    "ours_over_bare": ("ours_rows_per_s", "bare_rows_per_s", "our rule's rows/s over bare UPDATE"),
}
TARGETS: dict[str, tuple[str, float, str]] = {
    "ratio": (">=", TARGET_RATIO, "our rows/s over report 003's ORM loop"),
    "ours_writer_max_wait_ms": (
        "<=",
        TARGET_WRITER_WAIT_MS,
        "a concurrent writer's longest wait while our rule runs",
    ),
}


async def _seed(engine: AsyncEngine) -> int:
    """ROWS coupons; every row whose hash falls under the share expired an hour ago, the others
    expire in a day: eligible rows are spread over the whole table, as in production."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO coupons (code, expires_at) SELECT 'c' || g, "
                "CASE WHEN (g::bigint * 7919) % 1000 < :share THEN now() - interval '1 hour' "
                "ELSE now() + interval '1 day' END FROM generate_series(1, :n) AS g"
            ),
            {"n": ROWS, "share": int(ELIGIBLE_SHARE * 1000)},
        )
    await _vacuum(engine)
    async with engine.connect() as conn:
        due = await conn.scalar(text("SELECT count(*) FROM coupons WHERE expires_at < now()"))
    return int(due or 0)


async def _vacuum(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE coupons"))
        await conn.execute(text("CHECKPOINT"))


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE coupons SET status = 'active', expired_at = NULL WHERE status <> 'active'")
        )
    await _vacuum(engine)


async def _expired(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        n = await conn.scalar(text("SELECT count(*) FROM coupons WHERE status = 'expired'"))
    return int(n or 0)


# --- the writer (its own process, so neither side's Python slows the other's clock) ----------
def _writer(dsn: str, rows: int, stop: Any, out: Any) -> None:
    asyncio.run(_write(dsn, rows, stop, out))


async def _write(dsn: str, rows: int, stop: Any, out: Any) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    rng = random.Random(3)
    waits: list[float] = []
    stmt = await conn.prepare("UPDATE coupons SET user_id = $1 WHERE id = $2")
    out.put("ready")
    while not stop.is_set():
        started = time.perf_counter()
        await stmt.fetch(f"w{rng.randint(1, 100)}", rng.randint(1, rows))
        waits.append(time.perf_counter() - started)
        await asyncio.sleep(0.002)
    await conn.close()
    waits.sort()
    out.put(
        {
            "n": len(waits),
            "max_ms": waits[-1] * 1000 if waits else 0.0,
            "p99_ms": waits[int(len(waits) * 0.99)] * 1000 if waits else 0.0,
        }
    )


class Writer:
    def __init__(self, env: BenchEnv) -> None:
        ctx = mp.get_context("spawn")
        self.stop, self.out = ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(
            target=_writer, args=(pg_dsn(env.database_url), ROWS, self.stop, self.out)
        )

    def __enter__(self) -> Writer:
        self.proc.start()
        # connected and writing before the timed run starts (its start-up is not timed)
        assert self.out.get(timeout=120) == "ready"
        time.sleep(0.5)
        return self

    def result(self) -> dict[str, float]:
        self.stop.set()
        got: dict[str, float] = self.out.get(timeout=60)
        self.proc.join(30)
        return got

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.proc.kill()


# --- the two designs ------------------------------------------------------------------------
async def _bound(env: BenchEnv, engine: AsyncEngine) -> Any:
    """The shipped rule with the bench's batch size, bound at "startup" (not timed)."""
    from celery_stack_core.rules import load_rules
    from celery_stack_core.rules.bind import bind

    settings = env.settings(
        MAINTENANCE_RULE_OVERRIDES={
            "check-expired-coupons": {"max_batches": 100_000}
            | ({"batch_size": BATCH} if BATCH else {})
        }
    )
    rules = [r for r in load_rules(settings) if r.name == "check-expired-coupons"]
    (bound,) = await bind(engine, rules)
    return bound


async def _ours(engine: AsyncEngine, bound: Any) -> None:
    from celery_stack_core.rules.engine import run_rule

    await run_rule(engine, bound)


async def _naive(engine: AsyncEngine) -> None:
    """Report 003's check_expired_coupons: query the expired coupons with the ORM, change each,
    commit once at the end (every row stays locked until then)."""
    from celery_stack_core.models import Coupon

    now = datetime.now(UTC)
    async with AsyncSession(engine, expire_on_commit=False) as session:
        coupons = (
            await session.scalars(
                select(Coupon).where(Coupon.status == "active", Coupon.expires_at <= func.now())
            )
        ).all()
        for coupon in coupons:
            coupon.status = "expired"
            coupon.expired_at = now
        await session.commit()


async def _bare(engine: AsyncEngine) -> None:
    """The floor: every due row in one statement, one transaction."""
    from celery_stack_core.models import Coupon

    async with engine.begin() as conn:
        await conn.execute(
            update(Coupon)
            .where(Coupon.status == "active", Coupon.expires_at <= func.now())
            .values(status="expired", expired_at=func.now())
        )


async def _timed(env: BenchEnv, engine: AsyncEngine, which: str, due: int) -> dict[str, float]:
    bound = await _bound(env, engine)
    with Writer(env) as writer:
        started = time.perf_counter()
        if which == "ours":
            await _ours(engine, bound)
        elif which == "bare":
            await _bare(engine)
        else:
            await _naive(engine)
        elapsed = time.perf_counter() - started
        waits = writer.result()
    done = await _expired(engine)
    assert done == due, f"{which}: {done} rows expired, {due} were due"
    return {
        f"{which}_rows_per_s": due / elapsed,
        f"{which}_seconds": elapsed,
        f"{which}_writer_max_wait_ms": waits["max_ms"],
        f"{which}_writer_p99_ms": waits["p99_ms"],
        f"{which}_writer_updates": waits["n"],
    }


async def _run(env: BenchEnv) -> dict[str, float]:
    from celery_stack_core.db import make_engine

    engine = make_engine(env.settings(), pool_size=2)
    try:
        due = await _seed(engine)
        print(f"{ROWS} coupons, {due} due ({due / ROWS:.0%})", flush=True)
        out = await _timed(env, engine, "ours", due)
        await _reset(engine)
        out |= await _timed(env, engine, "naive", due)
        await _reset(engine)
        out |= await _timed(env, engine, "bare", due)
    finally:
        await engine.dispose()
    out["ratio"] = out["ours_rows_per_s"] / out["naive_rows_per_s"]
    for key, (num, den, _) in COMPARISONS.items():
        out[key] = out[num] / out[den]
    out["rows"], out["due"] = float(ROWS), float(due)
    _report(out)
    return out


def _report(out: dict[str, float]) -> None:
    rows = [
        [
            name,
            f"{out[f'{key}_rows_per_s']:,.0f}",
            f"{out[f'{key}_seconds']:.1f}",
            f"{out[f'{key}_writer_max_wait_ms']:.1f}",
            f"{out[f'{key}_writer_p99_ms']:.1f}",
        ]
        for name, key in (
            ("ours (rule, batches)", "ours"),
            ("report 003 (ORM loop)", "naive"),
            ("bare UPDATE (the floor)", "bare"),
        )
    ]
    print(table("expire coupons", ["design", "rows/s", "s", "writer max ms", "p99 ms"], rows))
    ok_ratio = out["ratio"] >= TARGET_RATIO
    ok_wait = out["ours_writer_max_wait_ms"] <= TARGET_WRITER_WAIT_MS
    print(f"ratio {out['ratio']:.1f}x (target >= {TARGET_RATIO}x): {verdict(ok_ratio)}")
    for key, (_, _, what) in COMPARISONS.items():
        print(f"{what}: {out[key]:.2f}x")
    print(
        f"writer max wait with ours {out['ours_writer_max_wait_ms']:.1f} ms "
        f"(target <= {TARGET_WRITER_WAIT_MS} ms): {verdict(ok_wait)}"
    )


def run(env: BenchEnv) -> dict[str, float]:
    return asyncio.run(_run(env))
