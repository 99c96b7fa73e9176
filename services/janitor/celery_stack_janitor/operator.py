"""The janitor's kopf operator (`celery-stack-janitor operator`).

- JanitorPolicy (celery-stack.io/v1alpha1) created/changed/resumed -> one CronJob, adopted by the
  policy (ownerReferences: Kubernetes deletes it with the policy; the delete handler also removes
  it at once). Its pod is the chart's janitor Job template (JANITOR_OPERATOR_JOB_TEMPLATE) with
  the policy's sweeps, dryRun and thresholds. Status: observedGeneration, cronJob, and from a
  timer lastScheduleTime (the CronJob's) and lastRun (the sweep's report, kept in Redis).
- A pod of this release DELETED (an event handler: kopf adds no finalizer to pods) -> its locks
  are released and its running scans requeued at once (celery_stack_core.sweeps.pods).
- Liveness: kopf's own endpoint on JANITOR_OPERATOR_HEALTH_PORT (/healthz).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from celery_stack_core.config import Settings, get_settings
from celery_stack_core.sweeps import reports
from celery_stack_core.sweeps.kube import in_cluster, namespace
from celery_stack_core.sweeps.pods import release_pod

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "celery-stack.io", "v1alpha1", "janitorpolicies"
THRESHOLDS = {
    "lockGraceSeconds": "JANITOR_LOCK_GRACE",
    "stuckScanGraceSeconds": "JANITOR_STUCK_SCAN_GRACE",
    "inflightMaxAgeSeconds": "JANITOR_INFLIGHT_MAX_AGE",
    "outboxMaxAgeSeconds": "JANITOR_OUTBOX_MAX_AGE",
    "maxKeys": "JANITOR_MAX_KEYS",
    "retentionFindingsDays": "RETENTION_FINDINGS_DAYS",
    "retentionOutboxDays": "RETENTION_OUTBOX_DAYS",
    "retentionDeadScansDays": "RETENTION_DEAD_SCANS_DAYS",
    "retentionLedgerDays": "RETENTION_LEDGER_DAYS",
}
# Used when no template file is configured (tests, a plain `celery-stack-janitor operator`).
DEFAULT_TEMPLATE: dict[str, Any] = {
    "spec": {
        "backoffLimit": 1,
        "activeDeadlineSeconds": 900,
        "ttlSecondsAfterFinished": 86400,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "janitor", "image": "celery-stack:latest"}],
            }
        },
    }
}


def job_template(settings: Settings) -> dict[str, Any]:
    path = settings.janitor.operator_job_template
    return json.loads(Path(path).read_text()) if path else copy.deepcopy(DEFAULT_TEMPLATE)


def cronjob_name(policy: str) -> str:
    return f"janitor-{policy}"[:52]  # CronJob names leave room for the Job suffix


def cronjob_for(policy: str, spec: dict[str, Any], template: dict[str, Any]) -> dict[str, Any]:
    """The CronJob a policy asks for (pure: the reconcile tests read it too)."""
    job = copy.deepcopy(template)
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = ["celery-stack-janitor", "sweep", "--json"]
    if spec.get("sweeps"):
        command += ["--only", ",".join(spec["sweeps"])]
    if spec.get("dryRun"):
        command.append("--dry-run")
    container["command"] = command
    env = [
        e
        for e in container.get("env", [])
        if e["name"] not in {"JANITOR_POLICY", *THRESHOLDS.values()}
    ]
    env.append({"name": "JANITOR_POLICY", "value": policy})
    for field, variable in THRESHOLDS.items():
        if field in spec.get("thresholds", {}):
            env.append({"name": variable, "value": str(spec["thresholds"][field])})
    container["env"] = env
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(policy),
            "labels": {"celery-stack.io/janitor-policy": policy},
        },
        "spec": {
            "schedule": spec["schedule"],
            "timeZone": "Etc/UTC",
            "suspend": bool(spec.get("suspend", False)),
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": job,
        },
    }


async def _batch() -> Any:
    from kubernetes_asyncio import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return client.ApiClient(), client


async def apply_cronjob(body: dict[str, Any], ns: str) -> str:
    """Create the CronJob, or patch it to the desired spec when it exists."""
    from kubernetes_asyncio.client.exceptions import ApiException

    api_client, client = await _batch()
    async with api_client as api:
        batch = client.BatchV1Api(api)
        name = body["metadata"]["name"]
        try:
            await batch.read_namespaced_cron_job(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await batch.create_namespaced_cron_job(ns, body)
            return "created"
        await batch.patch_namespaced_cron_job(name, ns, body)
        return "patched"


async def delete_cronjob(name: str, ns: str) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    api_client, client = await _batch()
    async with api_client as api:
        try:
            await client.BatchV1Api(api).delete_namespaced_cron_job(name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise


async def last_schedule(name: str, ns: str) -> str | None:
    api_client, client = await _batch()
    async with api_client as api:
        cj = await client.BatchV1Api(api).read_namespaced_cron_job(name, ns)
    when = cj.status.last_schedule_time if cj.status else None
    return when.isoformat() if when else None


# --- handlers ----------------------------------------------------------------------------------
CONTEXT: dict[str, Any] = {}  # "ctx": the SweepContext, "manager": its context manager


@kopf.on.startup()
async def startup_fn(settings: kopf.OperatorSettings, **_: Any) -> None:
    from celery_stack_janitor.context import sweep_context

    settings.posting.level = logging.WARNING
    # One namespace, known in advance: no cluster-wide namespace or CRD listing (least RBAC).
    settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="celery-stack.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="celery-stack.io"
    )
    manager = sweep_context(get_settings())
    CONTEXT["ctx"] = await manager.__aenter__()
    CONTEXT["manager"] = manager


@kopf.on.login()
def login_fn(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The service account in a pod, else the kubeconfig (KUBECONFIG): no client library."""
    if in_cluster():
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def cleanup_fn(**_: Any) -> None:
    manager = CONTEXT.pop("manager", None)
    if manager is not None:
        await manager.__aexit__(None, None, None)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def reconcile_fn(*, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """kopf's handler arguments are keyword-only; the policy's name, namespace, spec and
    generation all come from its body."""
    name, namespace = body.metadata.name or "", body.metadata.namespace or "default"
    cronjob = cronjob_for(name, dict(body.spec), job_template(get_settings()))
    kopf.adopt(cronjob, owner=body)
    outcome = await apply_cronjob(cronjob, namespace)
    log.info("janitor policy reconciled", extra={"policy": name, "cronjob": outcome})
    patch.status["observedGeneration"] = body.meta.get("generation")
    patch.status["cronJob"] = cronjob["metadata"]["name"]


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete_fn(*, name: str, namespace: str | None, **_: Any) -> None:
    # ownerReferences make Kubernetes collect it too; deleting it here does not wait for that.
    await delete_cronjob(cronjob_name(name), namespace or "default")


@kopf.timer(
    GROUP, VERSION, PLURAL, interval=get_settings().janitor.operator_status_interval, idle=0
)
async def status_fn(*, name: str, namespace: str | None, patch: kopf.Patch, **_: Any) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        patch.status["lastScheduleTime"] = await last_schedule(
            cronjob_name(name), namespace or "default"
        )
    except ApiException as exc:
        log.warning("cannot read the policy's CronJob", extra={"policy": name, "error": repr(exc)})
    ctx = CONTEXT.get("ctx")
    report = await reports.load(ctx.redis, name) if ctx else None
    if report is not None:
        patch.status["lastRun"] = {
            k: report.get(k) for k in ("dry_run", "finished_at", "found", "done", "skipped")
        }


@kopf.on.event("", "v1", "pods")
async def pod_event_fn(*, event: kopf.RawEvent, **_: Any) -> None:
    """A pod of ours is gone: release what its processes held, without waiting for TTLs."""
    if event.get("type") != "DELETED":
        return
    meta = event["object"]["metadata"]
    labels = meta.get("labels") or {}
    wanted = dict(
        p.split("=", 1) for p in get_settings().janitor.operator_pod_selector.split(",") if "=" in p
    )
    if any(labels.get(k) != v for k, v in wanted.items()):
        return
    ctx = CONTEXT.get("ctx")
    if ctx is None:
        return
    report = await release_pod(ctx, meta["uid"])
    log.info(
        "pod deleted: released what it held",
        extra={"pod": meta.get("name"), "uid": meta["uid"], **report.as_dict()},
    )


def run_operator() -> None:
    settings = get_settings()
    ns = (
        namespace(settings)
        if settings.janitor.namespace or Path("/var/run/secrets").exists()
        else "default"
    )
    port = settings.janitor.operator_health_port
    kopf.configure(verbose=False)
    kopf.run(
        standalone=True,
        namespaces=[ns],
        liveness_endpoint=f"http://0.0.0.0:{port}/healthz" if port else None,
    )
