"""The clock for lease timing: monotonic, never the wall clock.

CLOCK_BOOTTIME where the OS has it: monotonic like CLOCK_MONOTONIC, but it also counts time
the machine spent suspended, so a leader resumed from a suspend sees its renewal as old.
Wall-clock time is only used for what a slot *is* (its nominal due time), never for whether
this process may still send.
"""

from __future__ import annotations

import time

_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def now() -> float:
    if _CLOCK is not None:
        return time.clock_gettime(_CLOCK)
    return time.monotonic()


def wall_ms() -> int:
    return int(time.time() * 1000)
