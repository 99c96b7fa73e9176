"""CLIs find the stack `make run` runs (.run/stack.env), not a default URL that may be another
server: `celery-stack-beat status` reported `leader: none` from a system Redis on 6379."""

import json
import os
import subprocess
import sys
from pathlib import Path

from celery_stack_core import keys
from celery_stack_core.localstack import (
    PID_KEY,
    STACK_FILE,
    find_stack_file,
    use_local_stack,
    write_stack_file,
)


def _stack(tmp_path: Path, **settings: str) -> Path:
    (tmp_path / ".run").mkdir()
    path = tmp_path / STACK_FILE
    write_stack_file(path, settings)
    return path


def test_settings_of_a_running_stack_fill_the_environment_without_overriding(tmp_path):
    path = _stack(tmp_path, REDIS_URL="redis://127.0.0.1:56379/0", DATABASE_URL="postgresql://x")
    env = {"DATABASE_URL": "mine"}
    assert use_local_stack(env, start=tmp_path / "sub" / "dir") == path  # found from below
    assert env == {"DATABASE_URL": "mine", "REDIS_URL": "redis://127.0.0.1:56379/0"}


def test_a_file_left_by_a_stopped_stack_is_ignored(tmp_path):
    path = _stack(tmp_path, REDIS_URL="redis://127.0.0.1:56379/0")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(path.read_text().replace(f"{PID_KEY}={os.getpid()}", f"{PID_KEY}={dead.pid}"))
    assert find_stack_file(tmp_path) is None
    env: dict[str, str] = {}
    assert use_local_stack(env, start=tmp_path) is None and env == {}


async def test_beat_status_reads_the_local_stacks_redis(tmp_path, settings, redis):
    await redis.set(keys.BEAT_LEADER, json.dumps({"owner": "beat-1", "epoch": 7}))
    _stack(tmp_path, REDIS_URL=settings.stores.redis_url, DATABASE_URL=settings.stores.database_url)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "celery-stack-beat"), "status", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["leader"]["owner"] == "beat-1"
