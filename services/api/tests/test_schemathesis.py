"""A bounded schemathesis run against the real API process (real HTTP, PostgreSQL, Redis) with
each token: 0 server errors, 0 responses that break the OpenAPI document (status codes,
content types, headers, bodies). Fixed seed and example budget: the same cases every run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from celery_stack_core.config import DEV_ADMIN_TOKEN, DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
SEED = 20261129
MAX_EXAMPLES = 5
# The admin token differs from the user token only where visibility differs: the scans.
RUNS = {
    "user": (DEV_USER_TOKEN, ["--phases", "examples,coverage,fuzzing"]),
    "admin": (DEV_ADMIN_TOKEN, ["--phases", "examples,fuzzing", "--include-path-regex", "/scans"]),
}


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _argv(url: str, token: str, extra: list[str], report_dir: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{url}/openapi.json",
        "--checks", CHECKS,
        "--seed", str(SEED),
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
        "--request-timeout", "20",
        "-H", f"Authorization: Bearer {token}",
        "--report", "junit",
        "--report-dir", str(report_dir),
        *extra,
    ]  # fmt: skip


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    start_service, free_tcp_port, clean_db, tmp_path
):
    url = f"http://127.0.0.1:{free_tcp_port}"
    svc = start_service(
        "api", ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(free_tcp_port)]
    )
    wait_until(lambda: _ready(url), timeout=60, what="the API")
    # Both tokens at once against the one API process: the runs are independent.
    procs = {
        name: subprocess.Popen(
            _argv(url, token, extra, tmp_path / name),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        for name, (token, extra) in RUNS.items()
    }
    failed = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failed[name] = out[-10_000:]
    assert not failed, "\n".join(f"--- {n} ---\n{o}" for n, o in failed.items()) + (
        "\n--- API log ---\n" + svc.output()[-4_000:]
    )
