"""Who this process is: one scheme for lock owners, scan workers and beat's lease holder.

`owner_id` is `pod:<POD_UID>:<pid>` on Kubernetes (Downward API) and
`host:<hostname>:<pid>:<boot id>` elsewhere; `lease_holder` prefixes the pod (or host) name for
operators and appends a per-process nonce. `owner_is_gone` reads an owner id back.
POD_UID and POD_NAME are read through the settings only.
"""

from __future__ import annotations

import functools
import os
import secrets
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
    if settings.deploy.pod_uid:
        return f"pod:{settings.deploy.pod_uid}:{os.getpid()}"
    return f"host:{socket.gethostname()}:{os.getpid()}:{boot_id()}"


def lease_holder(settings: Settings) -> str:
    """`<pod or host name>_<owner id>_<nonce>`: the nonce makes a restarted process a new holder,
    so it never mistakes its predecessor's lease for its own."""
    name = settings.deploy.pod_name or socket.gethostname()
    return f"{name}_{owner_id(settings)}_{secrets.token_hex(4)}"


def _machine_and_pid(owner: str) -> tuple[str, int] | None:
    """("pod:<uid>" or "host:<hostname>:<boot id>", pid) of an owner id; None if malformed."""
    parts = owner.split(":")
    if parts[0] == "host" and len(parts) == 4 and parts[2].isdigit():
        return f"host:{parts[1]}:{parts[3]}", int(parts[2])
    if parts[0] == "pod" and len(parts) == 3 and parts[2].isdigit():
        return f"pod:{parts[1]}", int(parts[2])
    return None


def owner_is_gone(owner: str | None, *, me: str) -> bool:
    """True when `owner` was a process on the machine of `me` (same host and boot, or same pod)
    that no longer exists: what it held can be taken over at once instead of after a stale
    period."""
    theirs = _machine_and_pid(owner) if owner else None
    mine = _machine_and_pid(me)
    if theirs is None or mine is None or theirs[0] != mine[0] or theirs[1] == os.getpid():
        return False
    try:
        os.kill(theirs[1], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
