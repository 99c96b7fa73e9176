"""One sender process for bench_views: `buffer.increment` (the API's ingest call, one Lua
HINCRBY) for `--count` random post ids, from `--concurrency` coroutines, optionally paced to
`--rate` views/s. Several run at once, so the sender is not what limits the figure.

    python -m bench.view_sender --count 40000 --posts 1000 --seed 1 --out result.json
(REDIS_URL and COUNTER_SHARDS from the environment, as every service reads them.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time


async def _main(args: argparse.Namespace) -> dict[str, float]:
    from celery_stack_core import buffer
    from celery_stack_core.config import get_settings
    from celery_stack_core.redis_client import make_async_redis

    settings = get_settings()
    redis = make_async_redis(settings)
    rng = random.Random(args.seed)
    ids = [rng.randint(1, args.posts) for _ in range(args.count)]
    interval = args.concurrency / args.rate if args.rate else 0.0
    epoch = time.time()
    started = time.perf_counter()

    async def sender(part: list[int], first: float) -> None:
        due = first
        for target_id in part:
            if interval:
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                due += interval
            await buffer.increment(
                redis, "post", "views", target_id, shards=settings.counters.shards
            )

    n = args.concurrency
    await asyncio.gather(*(sender(ids[i::n], started + i * interval / n) for i in range(n)))
    seconds = time.perf_counter() - started
    await redis.aclose()
    return {"sent": float(len(ids)), "seconds": seconds, "started_epoch": epoch}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--posts", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.0, help="views/s of this process; 0 = max")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result = asyncio.run(_main(args))
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
