"""Celery's generic metrics, two ways: per-task cost of collecting them in-process from signals
(what we ship, celery_metrics.py) against consuming task events (celery-exporter's way).

- signals: a task's life through Celery's signals (publish, received, prerun, success, postrun)
  with our handlers, minus the same signals with no handler; in multiprocess mode (prefork
  workers: values in mmap'd files) and in a single process (the API, beat).
- events: the four task events (sent, received, started, succeeded) published to our Redis,
  which the worker and producer pay, plus the CPU an exporter spends receiving them.

Each probe is its own process (bench/metrics_probe.py); the median of REPEATS runs counts.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from typing import Any

from bench.common import ROOT, BenchEnv, median, table

SIGNAL_TASKS = 20_000
EVENT_TASKS = 500
REPEATS = 3

TARGETS: dict[str, tuple[str, float, str]] = {
    "signals_multiproc_us_per_task": (
        "<=",
        150.0,
        "in-process signal metrics cost a prefork worker at most 150 us per task",
    ),
    "events_over_signals": (
        ">=",
        1.0,
        "consuming events costs at least what signals cost per task (why we collect in-process)",
    ),
}


def _probe(env: BenchEnv, args: list[str], extra: dict[str, str] | None = None) -> dict[str, Any]:
    out = subprocess.run(
        [env.python, "-m", "bench.metrics_probe", *args],
        env={**env.child_env(LOG_LEVEL="WARNING"), **(extra or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _signals(env: BenchEnv, *, multiproc: bool, bare: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"PROMETHEUS_MULTIPROC_DIR": tmp} if multiproc else {}
        args = ["signals", str(SIGNAL_TASKS), *(["--bare"] if bare else [])]
        return float(_probe(env, args, extra)["us_per_task"])


def _events(env: BenchEnv) -> tuple[float, float]:
    """(publish us/task, exporter CPU us/task) with an exporter consuming while we publish."""
    consumer = subprocess.Popen(
        [env.python, "-m", "bench.metrics_probe", "consume", str(EVENT_TASKS)],
        env=env.child_env(LOG_LEVEL="WARNING"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout is not None
        assert json.loads(consumer.stdout.readline())["ready"]
        time.sleep(0.5)  # its fanout subscription is live
        publish = float(_probe(env, ["events", str(EVENT_TASKS)])["us_per_task"])
        out, _ = consumer.communicate(timeout=120)
        consumed = json.loads(out.strip().splitlines()[-1])
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait()
    return publish, float(consumed["cpu_us_per_task"])


def run(env: BenchEnv) -> dict[str, float]:
    rows: dict[str, list[float]] = {
        k: [] for k in ("bare", "single", "multiproc", "publish", "consume", "bare_mp")
    }
    for _ in range(REPEATS):
        rows["bare"].append(_signals(env, multiproc=False, bare=True))
        rows["single"].append(_signals(env, multiproc=False, bare=False))
        rows["bare_mp"].append(_signals(env, multiproc=True, bare=True))
        rows["multiproc"].append(_signals(env, multiproc=True, bare=False))
        publish, consume = _events(env)
        rows["publish"].append(publish)
        rows["consume"].append(consume)
    m = {k: median(v) for k, v in rows.items()}
    figures = {
        "signals_single_us_per_task": max(0.0, m["single"] - m["bare"]),
        "signals_multiproc_us_per_task": max(0.0, m["multiproc"] - m["bare_mp"]),
        "events_publish_us_per_task": m["publish"],
        "events_exporter_cpu_us_per_task": m["consume"],
    }
    events_total = (
        figures["events_publish_us_per_task"] + figures["events_exporter_cpu_us_per_task"]
    )
    figures["events_over_signals"] = events_total / max(
        figures["signals_multiproc_us_per_task"], 1e-9
    )
    print(
        table(
            f"Celery task metrics: cost per task (median of {REPEATS} runs)",
            ["way", "us/task", "paid by"],
            [
                ["signals, one process (api, beat)", figures["signals_single_us_per_task"], "it"],
                [
                    "signals, prefork multiprocess files",
                    figures["signals_multiproc_us_per_task"],
                    "the worker",
                ],
                [
                    "events: publish sent+received+started+succeeded",
                    figures["events_publish_us_per_task"],
                    "producer + worker",
                ],
                [
                    "events: exporter receives and counts them (CPU)",
                    figures["events_exporter_cpu_us_per_task"],
                    "an extra process",
                ],
            ],
        )
    )
    return figures
