"""`celery-stack-janitor` as a real process against real Redis and PostgreSQL: status, tasks,
sweep (dry run then real run, same report), JSON output and exit codes (0 ok, 1 failure, 2 usage)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from celery_stack_devstack.pytest_plugin import env_for

EXE = str(Path(sys.executable).parent / "celery-stack-janitor")


def janitor(settings, *args, **env):
    full = {**os.environ, **env_for(settings), **env}
    return subprocess.run([EXE, *args], env=full, capture_output=True, text=True, timeout=60)


async def test_status_tasks_and_sweep(settings, clean_db, redis):
    gone = uuid.uuid4()
    await redis.set(f"celery-task-meta-scan-{gone}-1", json.dumps({"status": "SUCCESS"}))
    st = janitor(settings, "status", "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["results"]["orphaned"] == 1
    tasks = janitor(settings, "tasks", "--orphaned", "--json")
    assert [t["task_id"] for t in json.loads(tasks.stdout)["items"]] == [f"scan-{gone}-1"]
    dry = janitor(settings, "sweep", "--dry-run", "--only", "orphaned-results", "--json")
    assert dry.returncode == 0, dry.stderr
    real = janitor(settings, "sweep", "--only", "orphaned-results", "--json")

    def pick(out):
        return [
            {k: s[k] for k in ("found", "done", "by_action", "skipped", "actions")}
            for s in json.loads(out)["sweeps"]
        ]

    assert pick(dry.stdout) == pick(real.stdout)
    assert pick(real.stdout)[0]["by_action"] == {"delete": 1}
    assert not await redis.exists(f"celery-task-meta-scan-{gone}-1")


def test_exit_codes_and_human_output(settings, free_tcp_port, monkeypatch):
    """In-process (typer's runner) to keep the suite fast; the process test above covers the
    entrypoint itself."""
    from typer.testing import CliRunner

    from celery_stack_core.config import get_settings
    from celery_stack_janitor.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["sweep", "--only", "bogus"]).exit_code == 2
    assert runner.invoke(app, ["nonsense"]).exit_code == 2
    human = runner.invoke(app, ["status"])
    assert human.exit_code == 0 and "orphaned" in human.output
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_tcp_port}/0")
    get_settings.cache_clear()
    try:
        down = runner.invoke(app, ["status", "--json"])
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert down.exit_code == 1 and "failed" in down.output


def test_finds_the_local_stack_settings_file(tmp_path, monkeypatch):
    """Next to `make run`, the CLI finds the running stack through .run/stack.env (no env
    needed); the environment wins when it names the stores."""
    from celery_stack_core.localstack import write_stack_file
    from celery_stack_janitor.cli import main

    (tmp_path / ".run").mkdir()
    write_stack_file(tmp_path / ".run" / "stack.env", {"REDIS_URL": "redis://h:1/0"})
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr("celery_stack_janitor.cli.app", lambda: None)
    main()
    assert os.environ["REDIS_URL"] == "redis://h:1/0"
    monkeypatch.setenv("REDIS_URL", "redis://mine:2/0")
    main()
    assert os.environ["REDIS_URL"] == "redis://mine:2/0"  # env set: it wins


def test_an_unknown_state_is_a_usage_error():
    from typer.testing import CliRunner

    from celery_stack_janitor.cli import app

    result = CliRunner().invoke(app, ["tasks", "--state", "SUCCES"])
    assert result.exit_code == 2 and "SUCCESS" in result.output
