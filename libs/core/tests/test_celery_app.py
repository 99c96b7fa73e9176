import pytest

from celery_stack_core.celery_app import UnroutedTask, make_celery, queue_of
from celery_stack_core.config import Settings


@pytest.fixture
def app():
    return make_celery(Settings(COUNTERS_SOFT_TIME_LIMIT=5, COUNTERS_TIME_LIMIT=7))


def test_routing_by_name_prefix():
    assert queue_of("counters.flush") == "counters"
    assert queue_of("scans.run") == "scans"
    assert queue_of("maintenance.outbox_relay") == "maintenance"
    with pytest.raises(UnroutedTask):
        queue_of("flush")  # a task nobody consumes is refused at the producer


def test_send_task_routes_and_refuses_unknown(app):
    router = app.amqp.router
    assert router.route({}, "counters.flush")["queue"].name == "counters"
    with pytest.raises(UnroutedTask):
        router.route({}, "misc.job")


def test_operating_contract_settings(app):
    c = app.conf
    assert c.task_serializer == "json" and c.accept_content == ["json"]
    assert c.enable_utc and c.timezone == "UTC"
    assert c.task_acks_late and c.task_reject_on_worker_lost
    assert c.worker_prefetch_multiplier == 1
    assert c.task_ignore_result
    assert c.result_expires == 3600
    assert c.broker_transport_options["visibility_timeout"] == 3600
    assert c.broker_transport_options["unacked_restore_throttle"] == 1
    assert "health_check_interval" not in c.broker_transport_options


def test_time_limits_per_queue(app):
    @app.task(name="counters.sample")
    def sample() -> None: ...

    @app.task(name="scans.sample")
    def sample2() -> None: ...

    app.finalize()
    t = app.tasks["counters.sample"]
    assert (t.soft_time_limit, t.time_limit) == (5, 7)
    t2 = app.tasks["scans.sample"]
    assert (t2.soft_time_limit, t2.time_limit) == (240, 300)
