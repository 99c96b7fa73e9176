"""OpenTelemetry: nothing is exported unless configured; with an OTLP endpoint, a request's spans
(HTTP and SQL) reach it. The receiver is a local HTTP server standing in for a collector."""

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until

pytestmark = pytest.mark.e2e


class Collector(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        Collector.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("configured", [True, False])
def test_request_spans_are_exported_only_when_configured(
    start_service, free_tcp_port, clean_db, configured
):
    Collector.received = []
    server = HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}" if configured else ""
    api = start_service(
        "api",
        ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(free_tcp_port)],
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
    )
    base = f"http://127.0.0.1:{free_tcp_port}"

    def up():
        try:
            return httpx.get(f"{base}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, what="api")
    r = httpx.post(
        f"{base}/api/v1/posts",
        json={"title": "t"},
        headers={"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "u"},
    )
    assert r.status_code == 201
    # uvicorn re-raises SIGTERM after its graceful shutdown; the lifespan flushed the spans
    assert api.stop() in (0, -15)
    server.shutdown()
    if not configured:
        assert Collector.received == []
        return
    paths = {p for p, _ in Collector.received}
    body = b"".join(b for _, b in Collector.received)
    assert paths == {"/v1/traces"}
    assert b"POST /api/v1/posts" in body  # the HTTP server span
    assert b"postgresql" in body  # SQL spans (db.system) under it
