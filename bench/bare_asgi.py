"""The floor for one API process: a bare ASGI endpoint doing the same Redis work as our view
ingest, for bench_ingest only.

`POST /api/v1/posts/{id}/views` with `Authorization: Bearer <token>` (compared as bytes, no
hashing, no scopes), then `buffer.increment` (the same one Lua HINCRBY our API runs), then the
same 202 body. No framework, no existence check, no metrics. Served by uvicorn with the same
options as `celery-stack-api serve`.

    python -m bench.bare_asgi --port 8001      (REDIS_URL, COUNTER_SHARDS from the environment)
"""

from __future__ import annotations

import argparse
import re
from typing import Any

_PATH = re.compile(r"/api/v1/posts/([1-9][0-9]{0,18})/views")
TOKEN = b"Bearer dev-user-token"


def make_app() -> Any:
    from celery_stack_core import buffer
    from celery_stack_core.config import get_settings
    from celery_stack_core.redis_client import make_async_redis

    settings = get_settings()
    shards = settings.counters.shards
    redis = make_async_redis(settings)

    async def respond(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        m = _PATH.fullmatch(scope["path"])
        if m is None or scope["method"] != "POST":
            await respond(send, 404, b'{"detail":"Not Found"}')
            return
        if dict(scope["headers"]).get(b"authorization") != TOKEN:
            await respond(send, 401, b'{"detail":"unauthorized"}')
            return
        await buffer.increment(redis, "post", "views", int(m.group(1)), shards=shards)
        await respond(send, 202, b'{"accepted":true,"path":"' + scope["path"].encode() + b'"}')

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    uvicorn.run(
        "bench.bare_asgi:make_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
