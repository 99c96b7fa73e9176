"""Test-only entrypoint: the real API app whose scans hook SIGKILLs the process between the
COMMIT of a scan (+ outbox row) and its publish. Usage: python scans_api_crashing.py PORT"""

import os
import signal
import sys

import uvicorn

from celery_stack_api.main import create_app
from celery_stack_api.scans import ScanHooks


async def crash(scan_id: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


app = create_app()
app.state.scan_hooks = ScanHooks(after_commit=crash)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
