"""/api/v1/maintenance: admin only; a dry run reports at once; a real run is a job on the
maintenance queue (202), one per kind (409), whose progress and counts GET jobs/{id} shows."""

import json
import uuid

from sqlalchemy import insert

from celery_stack_core import keys
from celery_stack_core.config import DEV_ADMIN_TOKEN
from celery_stack_core.models import Scan
from celery_stack_core.sweeps import jobs
from celery_stack_core.sweeps.base import SweepContext

ADMIN = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}


async def seed(engine, redis):
    live = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(insert(Scan.__table__).values(id=live, owner="u1", domain="example.com"))
    gone = uuid.uuid4()
    await redis.set(f"celery-task-meta-scan-{live}-1", json.dumps({"status": "SUCCESS"}), ex=600)
    await redis.set(f"celery-task-meta-scan-{gone}-1", json.dumps({"status": "FAILURE"}), ex=600)
    await redis.set("celery-task-meta-other", json.dumps({"status": "SUCCESS"}))  # no TTL
    return live, gone


async def test_user_token_is_refused_everywhere(api):
    for method, path in [
        ("GET", "/api/v1/maintenance/status"),
        ("GET", "/api/v1/maintenance/celery-tasks"),
        ("POST", "/api/v1/maintenance/cleanup/full"),
        ("GET", f"/api/v1/maintenance/jobs/{uuid.uuid4()}"),
    ]:
        r = await api.request(method, path)
        assert r.status_code == 403, (path, r.text)


async def test_status_and_tasks_show_orphans(api, clean_db, redis):
    live, gone = await seed(clean_db, redis)
    r = await api.get("/api/v1/maintenance/status", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"] == {
        "total": 3,
        "by_state": {"SUCCESS": 2, "FAILURE": 1},
        "without_ttl": 1,
        "orphaned": 1,
        "complete": True,
    }
    assert set(body["queues"]) >= {"counters", "scans", "maintenance", "unacked"}
    r = await api.get("/api/v1/maintenance/celery-tasks?orphaned=true", headers=ADMIN)
    assert [t["task_id"] for t in r.json()["items"]] == [f"scan-{gone}-1"]
    r = await api.get("/api/v1/maintenance/celery-tasks?state=SUCCESS&limit=10", headers=ADMIN)
    assert {t["task_id"] for t in r.json()["items"]} == {f"scan-{live}-1", "other"}
    r = await api.get("/api/v1/maintenance/celery-tasks?limit=0", headers=ADMIN)
    assert r.status_code == 422


async def test_dry_run_reports_and_changes_nothing(api, clean_db, redis):
    _, gone = await seed(clean_db, redis)
    r = await api.post("/api/v1/maintenance/cleanup/orphaned-tasks?dry_run=true", headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["found"] == 2 and body["done"] == 2
    assert body["sweeps"][0]["by_action"] == {"delete": 1, "expire": 1}
    assert await redis.exists(f"celery-task-meta-scan-{gone}-1")
    r = await api.post("/api/v1/maintenance/cleanup/nonsense", headers=ADMIN)
    assert r.status_code == 422


async def test_real_run_is_one_job_per_kind_on_the_maintenance_queue(
    api, settings, clean_db, redis
):
    _, gone = await seed(clean_db, redis)
    await redis.set(keys.lock("leaked"), json.dumps({"owner": "host:elsewhere:1:x", "ttl": 1}))
    r = await api.post("/api/v1/maintenance/cleanup/orphaned-tasks?dry_run=false", headers=ADMIN)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["kind"] == "orphaned-tasks"
    again = await api.post(
        "/api/v1/maintenance/cleanup/orphaned-tasks?dry_run=false", headers=ADMIN
    )
    assert again.status_code == 409
    other = await api.post("/api/v1/maintenance/cleanup/locks?dry_run=false", headers=ADMIN)
    assert other.status_code == 202  # another kind may run beside it
    # the message is on the maintenance queue with the job's task id
    msgs = [json.loads(m)["headers"] for m in await redis.lrange("maintenance", 0, -1)]
    assert {m["id"] for m in msgs} == {
        f"janitor-job-{job['id']}",
        f"janitor-job-{other.json()['id']}",
    }
    assert {m["task"] for m in msgs} == {jobs.JOB_TASK}
    # what the maintenance worker's task runs
    ctx = SweepContext(redis, clean_db, settings)
    assert await jobs.execute(ctx, uuid.UUID(job["id"])) == "succeeded"
    assert await jobs.execute(ctx, uuid.UUID(job["id"])) == "not_queued"  # a redelivery: no-op
    r = await api.get(f"/api/v1/maintenance/jobs/{job['id']}", headers=ADMIN)
    done = r.json()
    assert done["status"] == "succeeded", done
    assert done["report"]["found"] == 2 and done["report"]["done"] == 2
    assert done["progress"]["finished"] == ["orphaned-results"]
    assert not await redis.exists(f"celery-task-meta-scan-{gone}-1")
    assert await redis.ttl("celery-task-meta-other") > 0
    # finished: the kind is free again
    r = await api.post("/api/v1/maintenance/cleanup/orphaned-tasks?dry_run=false", headers=ADMIN)
    assert r.status_code == 202
    r = await api.get(f"/api/v1/maintenance/jobs/{uuid.uuid4()}", headers=ADMIN)
    assert r.status_code == 404
