"""Redis Cluster's key slots, to check in tests what keys.py promises: every Lua script is called
with keys of one slot (a Cluster refuses anything else with CROSSSLOT), except the scripts named
in SINGLE_REDIS. The pytest plugin records every script call of every test (ScriptSlots)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis.commands.core import ScriptCommands

ROOT = Path(__file__).resolve().parents[3]
# redis-py's own EVAL/EVALSHA: a recorder installed inside another one replaces it meanwhile.
_REAL_EVAL, _REAL_EVALSHA = ScriptCommands._eval, ScriptCommands._evalsha
# Scripts that cannot be Cluster-safe, and why (keys.py's docstring names them too).
SINGLE_REDIS = {
    "scan_results": "SCANs one node for Celery's result keys",
    "apply_results": "called with Celery's result keys, which carry no hash tag",
}


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, the Redis Cluster key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot(key: str | bytes) -> int:
    """CLUSTER KEYSLOT: the hash tag's content when the key has a non-empty {...}."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % 16384


def scripts() -> dict[str, Path]:
    """Every Lua script of the product code, by name."""
    return {
        p.stem: p
        for d in ("libs", "services")
        for p in (ROOT / d).rglob("*.lua")
        if ".venv" not in p.parts
    }


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


class ScriptSlots:
    """Records the script calls (EVAL, EVALSHA) whose keys span several Cluster slots."""

    def __init__(self) -> None:
        self.exempt = {_sha(scripts()[n].read_text()) for n in SINGLE_REDIS if n in scripts()}
        self.names = {_sha(p.read_text()): n for n, p in scripts().items()}
        self.crossing: list[str] = []

    def check(self, sha: str, numkeys: int, keys_and_args: tuple[Any, ...]) -> None:
        # Only our scripts: libraries run their own (kombu's binding script takes keys of two
        # slots), and keys.py promises nothing about those.
        if sha not in self.names or sha in self.exempt:
            return
        keys = keys_and_args[: int(numkeys)]
        if len({slot(k) for k in keys}) <= 1:
            return
        self.crossing.append(f"{self.names.get(sha, sha)}: {list(keys)}")

    @contextmanager
    def installed(self) -> Iterator[ScriptSlots]:
        """Check every script call made through redis-py (sync and asyncio) while inside."""
        before = ScriptCommands._eval, ScriptCommands._evalsha
        recorder = self

        def _eval(client: Any, command: str, script: str, numkeys: int, *rest: Any) -> Any:
            recorder.check(_sha(script), numkeys, rest)
            return _REAL_EVAL(client, command, script, numkeys, *rest)

        def _evalsha(client: Any, command: str, sha: str, numkeys: int, *rest: Any) -> Any:
            recorder.check(sha, numkeys, rest)
            return _REAL_EVALSHA(client, command, sha, numkeys, *rest)

        ScriptCommands._eval = _eval  # type: ignore[method-assign,assignment]
        ScriptCommands._evalsha = _evalsha  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            ScriptCommands._eval, ScriptCommands._evalsha = before  # type: ignore[method-assign]
