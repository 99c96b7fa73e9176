"""Load a Lua script that lives beside the module using it: `lua(__file__, "claim")`."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def lua(anchor: str, name: str) -> str:
    return (Path(anchor).parent / f"{name}.lua").read_text()
