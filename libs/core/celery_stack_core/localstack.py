"""Find the stack that `make run` is running, so a CLI talks to it and not to a default URL.

`make run` writes the settings it gave its services to `.run/stack.env` (KEY=VALUE lines,
with the supervisor's pid) and removes the file when it stops. A CLI calls `use_local_stack()`
before it reads its settings: variables already set in the environment win, and a file left
by a stack that is no longer running is ignored.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

STACK_FILE = Path(".run") / "stack.env"
PID_KEY = "CELERY_STACK_RUN_PID"


def write_stack_file(path: Path, settings: dict[str, str]) -> None:
    lines = [f"{PID_KEY}={os.getpid()}", *(f"{k}={v}" for k, v in sorted(settings.items()))]
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)  # the URLs may carry passwords (DATABASE_URL of your own server)
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_stack_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value
    return out


def _alive(pid: str | None) -> bool:
    if not pid or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    return True


def find_stack_file(start: Path | None = None) -> Path | None:
    """`.run/stack.env` of a running stack in `start` (default: the cwd) or a parent."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / STACK_FILE
        if candidate.is_file() and _alive(read_stack_file(candidate).get(PID_KEY)):
            return candidate
    return None


def use_local_stack(
    environ: MutableMapping[str, str] | None = None, start: Path | None = None
) -> Path | None:
    """Put the running local stack's settings into the environment; returns the file used."""
    environ = os.environ if environ is None else environ
    path = find_stack_file(start)
    if path is None:
        return None
    for key, value in read_stack_file(path).items():
        if key != PID_KEY:
            environ.setdefault(key, value)
    from celery_stack_core.config import get_settings

    get_settings.cache_clear()
    return path
