"""Adding a queue is one registry entry (plus chart values): routing, time limits, settings and
the worker's argv all follow it. The `reports` queue runs a task on a real worker process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from celery_stack_core import queues
from celery_stack_core.celery_app import make_celery, queue_of
from celery_stack_core.config import Settings
from celery_stack_core.worker import OwnedOption, worker_argv

HERE = Path(__file__).parent / "reports"


@pytest.fixture
def reports(monkeypatch):
    """The registry with `reports` added (by importing its module), restored afterwards."""
    before = dict(queues.QUEUES)
    monkeypatch.syspath_prepend(str(HERE))
    sys.modules.pop("reports_queue", None)
    import reports_queue

    assert queues.QUEUES["reports"] is reports_queue.REPORTS
    yield reports_queue.REPORTS
    sys.modules.pop("reports_queue", None)
    queues.QUEUES.clear()
    queues.QUEUES.update(before)


def test_the_registry_entry_is_all_the_python_a_queue_needs(reports, settings):
    assert queue_of("reports.build") == "reports"
    s = settings.replace(REPORTS_SOFT_TIME_LIMIT=3, REPORTS_PREFETCH=4)
    assert (s.queue("reports").soft_time_limit, s.queue("reports").time_limit) == (3, 9)
    argv = worker_argv(s, "reports", ["--pool", "solo"])
    assert argv[argv.index("-Q") + 1] == "reports"
    assert argv[argv.index("--prefetch-multiplier") + 1] == "4"
    assert "REPORTS_TIME_LIMIT" in Settings.env_names()
    app = make_celery(s)
    assert app.amqp.router.route({}, "reports.build")["queue"].name == "reports"


def test_argv_cannot_override_what_the_registry_owns(reports, settings):
    for arg in ("-Q", "--queues=x", "--prefetch-multiplier", "--time-limit", "--loglevel"):
        with pytest.raises(OwnedOption, match="REPORTS_"):
            worker_argv(settings, "reports", [arg, "1"])


@pytest.mark.timeout(60)
def test_a_task_runs_through_the_new_queue_on_a_real_worker(reports, settings, start_service):
    worker = start_service(
        "reports-worker",
        ["python", str(HERE / "worker.py"), "--pool", "solo"],
        PYTHONPATH=str(HERE),
        REPORTS_SOFT_TIME_LIMIT="6",
    )
    producer = make_celery(Settings(**settings.values()))
    try:
        result = producer.send_task("reports.build", args=[3])
        got = result.get(timeout=45)
    except Exception as exc:
        raise AssertionError(f"{exc!r}\n{worker.output()[-3000:]}") from exc
    finally:
        producer.close()
    assert got["n"] == 3 and got["queue"] == "reports"
    assert got["hostname"].startswith("reports@")
    assert got["limits"] == [6, 9]  # the worker's env over the registry's default
