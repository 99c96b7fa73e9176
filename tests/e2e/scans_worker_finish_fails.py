"""Test-only entrypoint: worker-scans whose final write of a scan (lifecycle.finish) fails every
time for domains starting with "finfail." (as when with_retry gives up on the database).
Production code has no such switch; only this script installs it."""

import sys

from celery_stack_core.hooks import HOOKS
from celery_stack_scans import lifecycle

current = {"domain": ""}


def remember(step: str, domain: str) -> None:
    if step == "claimed":
        current["domain"] = domain


real_finish = lifecycle.finish


async def finish(*args, **kwargs):
    if current["domain"].startswith("finfail."):
        raise RuntimeError("injected: the scan's finish keeps failing")
    return await real_finish(*args, **kwargs)


HOOKS.install("scans", remember)
lifecycle.finish = finish

from celery_stack_scans.cli import main  # noqa: E402

main(sys.argv[1:])
