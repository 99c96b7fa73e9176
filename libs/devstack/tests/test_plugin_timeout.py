"""An async test that hangs shows where its tasks wait before pytest-timeout ends it (CI hung
once with only thread stacks to show: the loop idle in select, no task's frame)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HANGING = """
import asyncio

import pytest


async def wait_forever_here(event: asyncio.Event) -> None:
    await event.wait()


@pytest.mark.timeout(4)
async def test_hangs():
    await asyncio.create_task(wait_forever_here(asyncio.Event()))
"""


def test_a_hanging_async_test_prints_its_task_stacks(tmp_path: Path) -> None:
    (tmp_path / "test_hang.py").write_text(HANGING)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "celery_stack_devstack.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            str(tmp_path / "test_hang.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    assert "Timeout (>4.0s)" in out, out[-3000:]
    assert "tasks at 4 s" in out, out[-3000:]  # 0.9 of the timeout, rounded
    assert "in wait_forever_here" in out, out[-3000:]  # the task's own frame
