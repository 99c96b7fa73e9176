"""A bounded schemathesis run against the real API process (real HTTP, PostgreSQL, Redis) with
each token: 0 server errors, 0 responses that break the OpenAPI document (status codes,
content types, headers, bodies), and the document's constraints are the validation: input it
calls valid is accepted (positive_data_acceptance), input it calls invalid is refused
(negative_data_rejection). Fixed seed and example budget: the same cases every run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from celery_stack_core.config import DEV_ADMIN_TOKEN, DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until

CHECKS = (
    # responses: no 5xx, and status, content type, headers and body as documented
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,"
    # requests: the schema's constraints are the validation, both ways
    "positive_data_acceptance,negative_data_rejection,missing_required_header,"
    # protocol: undeclared methods refused, Allow as documented, auth never ignored
    "unsupported_method,allow_header_conformance,ignored_auth,"
    # a deleted resource stays gone, a created one can be read
    "use_after_free,ensure_resource_availability"
)
SEED = 20261129
MAX_EXAMPLES = 5
# The admin token differs from the user token where visibility differs (scans) and where only
# an admin gets past the 403 (maintenance): those operations run again with it.
RUNS = {
    "user": (DEV_USER_TOKEN, ["--phases", "examples,coverage,fuzzing"]),
    "admin": (
        DEV_ADMIN_TOKEN,
        ["--phases", "examples,coverage,fuzzing", "--include-path-regex", "/(scans|maintenance)"],
    ),
}
# The one rule JSON Schema cannot state: content rules' names are unique (a finding's key is
# its rule's name). `uniqueItems` compares whole rules, so the document allows two rules named
# alike; the field's description says they must differ, and this operation may answer 422 to
# otherwise valid data. Every other operation gets the default expectation (2xx, 401, 403, 404,
# 409, 429, 5xx - and 5xx is then caught by not_a_server_error).
CONFIG = """
[[operations]]
include-path = "/api/v1/scans"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""
_SUMMARY = re.compile(r"Test cases:\s*\n\s*(\d+) generated")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _argv(url: str, token: str, extra: list[str], report_dir: Path) -> list[str]:
    return [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(report_dir.parent / "schemathesis.toml"),
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
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
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
        cases = _SUMMARY.search(out)
        # exit 0 with cases really sent: every check passed on every one of them
        if proc.returncode != 0 or not cases or int(cases.group(1)) < 100:
            failed[name] = out[-10_000:]
    assert not failed, "\n".join(f"--- {n} ---\n{o}" for n, o in failed.items()) + (
        "\n--- API log ---\n" + svc.output()[-4_000:]
    )
