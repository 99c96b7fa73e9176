"""`make run` for a newcomer: ports probed the way servers bind, a taken port said loudly, the
banner only once the stack can work, no Celery root warning, `make help` lists every target."""

import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from celery_stack_devstack import run, servers
from celery_stack_devstack.processes import Ports, local_stack

ROOT = Path(__file__).resolve().parents[3]


def _time_wait_port() -> int:
    """A port whose only use is a connection in TIME-WAIT (the server closed first)."""
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the active close: TIME-WAIT is on the server's port
    client.recv(1)
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_is_free_and_a_listening_one_is_not():
    """After Ctrl-C and a quick `make run`, TIME-WAIT made every port look busy and the stack
    moved silently to random ports."""
    import socket

    port = _time_wait_port()
    with socket.socket() as plain:  # the old probe: no SO_REUSEADDR
        try:
            plain.bind(("127.0.0.1", port))
            old_probe_free = True
        except OSError:
            old_probe_free = False
    assert not old_probe_free  # the situation is real: TIME-WAIT blocks a plain bind
    assert servers.port_available(port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert not servers.port_available(taken.getsockname()[1])


def test_a_port_in_time_wait_is_kept():
    port = _time_wait_port()
    assert run.pick_port(port, "the API", move=False) == port


def test_a_taken_port_stops_the_run_unless_asked_to_move(capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            run.PortTaken, match=rf"port {port} \(the API\) is in use.*--move-ports"
        ):
            run.pick_port(port, "the API", move=False)
        moved = run.pick_port(port, "the API", move=True)
    assert moved != port
    assert f"port {port} (the API) is in use: the API moves to {moved}" in capsys.readouterr().out


@pytest.fixture
def readyz():
    status = {"code": 503}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", status
    server.shutdown()
    server.server_close()


def test_ready_means_readyz_and_every_worker_consuming_since_the_start(readyz, tmp_path):
    url, status = readyz
    beats = [tmp_path / "w1.alive", tmp_path / "beat.alive"]
    beats[0].touch()
    os.utime(beats[0], (1, 1))  # a heartbeat left by an earlier run
    since = time.time()
    assert not run.stack_ready(url, beats, since)
    status["code"] = 200
    assert not run.stack_ready(url, beats, since)  # the API is up, the workers are not
    for f in beats:
        f.touch()
    assert run.stack_ready(url, beats, since)
    status["code"] = 503
    assert not run.stack_ready(url, beats, since)


def test_every_worker_and_beat_has_a_heartbeat_the_banner_waits_for(tmp_path):
    stack = local_stack(tmp_path, Ports())
    names = {p.name for p in stack if p.name.startswith(("worker-", "beat-"))}
    files = run._heartbeats(stack)
    assert len(files) == len(names) >= 5


def test_celerys_root_warning_is_silenced_in_local_workers(tmp_path):
    [worker] = [p for p in local_stack(tmp_path, Ports()) if p.name == "worker-counters"]
    code = (
        "import warnings\n"
        "from celery.exceptions import SecurityWarning\n"
        "from celery.platforms import ROOT_DISCOURAGED\n"
        "warnings.warn(SecurityWarning(ROOT_DISCOURAGED.format(uid=0, euid=0, gid=0, egid=0)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **worker.env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "superuser" not in out.stderr


def test_make_help_lists_every_target_digits_included():
    targets = re.findall(r"^([a-z0-9-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    assert {"e2e", "k8s", "e2e-cluster"} <= set(targets)
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(targets) <= listed


def test_every_port_of_the_stack_is_probed(capsys):
    """The demo site's and the metrics ports were not probed: a taken one killed the run with
    a traceback from the child instead of a message."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free = run._free_run(run.METRICS_PORTS + 2)
        for ports, what in [
            (Ports(api=free, demo_site=port, metrics_base=free + 1), "the demo site"),
            (Ports(api=free, demo_site=free + 1, metrics_base=port - 2), "a metrics port"),
        ]:
            with pytest.raises(run.PortTaken, match=what):
                run.pick_ports(ports, move=False)
            moved = run.pick_ports(ports, move=True)
            bound = {moved.api, moved.demo_site, *(moved.metrics(i) for i in range(5))}
            assert port not in bound
