"""Test-only entrypoint: the real API app whose scans hook SIGKILLs the process between the
COMMIT of a scan (+ outbox row) and its publish. Usage: python scans_api_crashing.py PORT"""

import os
import signal
import sys

import uvicorn

from celery_stack_api.main import create_app
from celery_stack_core.hooks import HOOKS


async def crash(step: str, scan_id: str) -> None:
    if step == "committed":  # between the COMMIT and the publish
        os.kill(os.getpid(), signal.SIGKILL)


HOOKS.install("api.scans", crash)
app = create_app()
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
