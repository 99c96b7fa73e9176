"""A bounded schemathesis run against the real API process (real HTTP, PostgreSQL, Redis) with
each token: 0 server errors, 0 responses that break the OpenAPI document (status codes,
content types, headers, bodies). Fixed seed and example budget: the same cases every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from celery_stack_core.config import DEV_ADMIN_TOKEN, DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
SEED = 20261129
MAX_EXAMPLES = 12


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# The admin token differs only where visibility differs: the scans operations.
RUNS = {
    "user": (DEV_USER_TOKEN, []),
    "admin": (DEV_ADMIN_TOKEN, ["--include-path-regex", "/scans"]),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    start_service, free_tcp_port, clean_db, run, tmp_path
):
    token, only = RUNS[run]
    url = f"http://127.0.0.1:{free_tcp_port}"
    svc = start_service(
        "api", ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(free_tcp_port)]
    )
    wait_until(lambda: _ready(url), timeout=60, what="the API")
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}/openapi.json",
        "--checks", CHECKS,
        "--seed", str(SEED),
        "--max-examples", str(MAX_EXAMPLES),
        "--phases", "examples,coverage,fuzzing",
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
        "--request-timeout", "20",
        "-H", f"Authorization: Bearer {token}",
        "--report", "junit",
        "--report-dir", str(tmp_path),
        *only,
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = res.stdout[-12_000:] + res.stderr[-3_000:]
    assert res.returncode == 0, report + "\n--- API log ---\n" + svc.output()[-4_000:]
