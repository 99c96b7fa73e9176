"""Test-only entrypoint: worker-scans with a step hook that SIGKILLs its own process when a scan
of a domain starting with "crash." reaches the "claimed" step (a handler that kills its worker
every time). Production code has no such switch; only this script installs it."""

import os
import signal
import sys

from celery_stack_core.hooks import HOOKS


def die(step: str, domain: str) -> None:
    if step == "claimed" and domain.startswith("crash."):
        os.kill(os.getpid(), signal.SIGKILL)


HOOKS.install("scans", die)

from celery_stack_scans.cli import main  # noqa: E402

main(sys.argv[1:])
