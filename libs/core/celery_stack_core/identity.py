"""Who this process is, for lock owner records and worker identity."""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

from celery_stack_core.config import Settings


@functools.cache
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def owner_id(settings: Settings) -> str:
    """The pod UID on Kubernetes (Downward API), else host:pid:boot id.

    The pid is read at call time, so a forked child has its own identity.
    """
    if settings.POD_UID:
        return f"pod:{settings.POD_UID}:{os.getpid()}"
    return f"host:{socket.gethostname()}:{os.getpid()}:{boot_id()}"
