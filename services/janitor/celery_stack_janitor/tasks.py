"""Celery tasks of the maintenance queue: thin shells."""

from __future__ import annotations

import uuid

from celery_stack_core import aio, connections, outbox
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings
from celery_stack_core.sweeps import jobs
from celery_stack_core.sweeps.base import SweepContext
from celery_stack_core.sweeps.kube import pod_snapshot
from celery_stack_core.worker import install_hooks
from celery_stack_janitor.context import task_sender
from celery_stack_janitor.gauges import record_gauges
from celery_stack_janitor.relay import relay_all
from celery_stack_janitor.rules_tasks import register as register_rules

settings = get_settings()
app = make_celery(settings, "celery_stack_janitor")
install_hooks(app, settings, "worker-maintenance")
# No cleanup in worker_init (field report 002 ran one there): a blocking sweep at every worker
# start delays consuming, runs N times for N workers, and races the workers it judges. The
# CronJob and the operator run the sweeps instead (docs/operator-guide.md, "The janitor").
register_rules(app, settings)


@app.task(name="maintenance.outbox_relay")
def outbox_relay() -> int:
    async def run() -> int:
        engine = connections.engine()
        sent = await relay_all(
            engine,
            app,
            batch_size=settings.outbox.relay_batch,
            min_age=settings.outbox.relay_min_age,
        )
        await record_gauges(engine)
        return sent

    return aio.run(run())


@app.task(name=jobs.JOB_TASK)
def janitor_job(job_id: str) -> str:
    """A real sweep started through the API (POST /api/v1/maintenance/cleanup/{kind})."""
    ctx = SweepContext(
        connections.redis(),
        connections.engine(),
        settings,
        pods=pod_snapshot(settings),
        publish=outbox.celery_publisher(app),
        send_task=task_sender(app),
    )
    return aio.run(jobs.execute(ctx, uuid.UUID(job_id)))
