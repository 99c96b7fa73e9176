"""Whose is a lock or a running scan, and is that owner provably gone?

Owner ids come from celery_stack_core.identity: `pod:<uid>:<pid>` on Kubernetes, else
`host:<hostname>:<pid>:<boot id>`. The rule (DESIGN "Locks and the janitor"): an owner is gone
only when its heartbeat has been silent for the grace period AND
- a pod owner's pod UID is not among the pods that exist now (a snapshot taken AFTER the lock or
  row was read, so a pod that held it then and still lives is in it), or
- a host owner on this machine (same hostname and boot) has no process with that pid, or
- a host owner elsewhere (no Kubernetes: nothing else to ask) has stayed silent.
A stale heartbeat alone is never enough where more can be known.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from celery_stack_core.identity import boot_id


@dataclass(frozen=True)
class Owner:
    raw: str
    kind: str  # pod | host | unknown
    pid: int = 0
    host: str = ""
    boot: str = ""
    pod_uid: str = ""


def parse_owner(raw: str) -> Owner:
    parts = raw.split(":")
    try:
        if parts[0] == "pod" and len(parts) == 3:
            return Owner(raw, "pod", pid=int(parts[2]), pod_uid=parts[1])
        if parts[0] == "host" and len(parts) == 4:
            return Owner(raw, "host", pid=int(parts[2]), host=parts[1], boot=parts[3])
    except ValueError:
        pass
    return Owner(raw, "unknown")


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@dataclass(frozen=True)
class Verdict:
    gone: bool
    reason: str  # why it is gone (pod_gone, pid_gone, silent) or why it is kept


def judge(owner: Owner, *, silence: float, grace: float, pods: frozenset[str] | None) -> Verdict:
    """`silence`: seconds since the owner's last heartbeat (inf when none is left)."""
    if silence < grace:
        return Verdict(False, "heartbeat_fresh")
    if owner.kind == "pod":
        if pods is None:
            return Verdict(False, "pods_unknown")
        return Verdict(False, "owner_alive") if owner.pod_uid in pods else Verdict(True, "pod_gone")
    if owner.kind == "host":
        if owner.host == socket.gethostname() and owner.boot == boot_id():
            alive = owner.pid == os.getpid() or pid_exists(owner.pid)
            return Verdict(False, "owner_alive") if alive else Verdict(True, "pid_gone")
        return Verdict(True, "silent")
    return Verdict(False, "owner_unknown")
