"""Structured JSON logs on stdout, one object per line, with the trace id when there is one."""

from __future__ import annotations

import logging
import sys
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from celery_stack_core import logsummary


class _Formatter(JsonFormatter):
    def __init__(self, service: str) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        self.service = service

    def add_fields(
        self, log: dict[str, Any], record: logging.LogRecord, extra: dict[str, Any]
    ) -> None:
        super().add_fields(log, record, extra)
        log["service"] = self.service
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            log["trace_id"] = format(ctx.trace_id, "032x")
            log["span_id"] = format(ctx.span_id, "016x")


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter(service))
    logsummary.install(handler)  # periodic no-op task runs: DEBUG + a summary a minute
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Python warnings (Celery's SecurityWarning as root, deprecations) become JSON records too,
    # instead of raw multi-line text on stderr.
    logging.captureWarnings(True)
    for noisy in ("httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
