"""Find the local stack's settings for the CLI.

Inside Kubernetes and wherever REDIS_URL / DATABASE_URL are set, the environment wins. Run next
to `make run`, the CLI reads the settings file that `make run` writes under `.run/` for CLIs
(KEY=VALUE lines), so `celery-stack-janitor status` talks to that stack with no flags.
"""

from __future__ import annotations

import os
from pathlib import Path

CANDIDATES = (".run/settings.env", ".run/env")


def find_run_env(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for name in CANDIDATES:
            if (folder / name).is_file():
                return folder / name
    return None


def load_local_run_env() -> Path | None:
    if os.environ.get("REDIS_URL") or os.environ.get("DATABASE_URL"):
        return None
    path = find_run_env()
    if path is None:
        return None
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key, value.strip().strip("'\""))
    return path
