"""Celery tasks of the maintenance queue: thin shells."""

from __future__ import annotations

from celery_stack_core import aio, connections
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings
from celery_stack_core.worker import install_hooks
from celery_stack_janitor.relay import relay_all
from celery_stack_janitor.rules_tasks import register as register_rules

settings = get_settings()
app = make_celery(settings, "celery_stack_janitor")
install_hooks(app, settings, "worker-maintenance")
register_rules(app, settings)


@app.task(name="maintenance.outbox_relay")
def outbox_relay() -> int:
    return aio.run(
        relay_all(
            connections.engine(),
            app,
            batch_size=settings.outbox.relay_batch,
            min_age=settings.outbox.relay_min_age,
        )
    )
