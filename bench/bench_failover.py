"""Beat failover: our leader-elected, fenced beat against RedBeat, the usual fix, measured.

Ours: two `celery-stack-beat run` replicas with the DEFAULT lease (15 s lease, 10 s renew
deadline, 2 s retry, 0.5 s tick), a 1-second job with catch-up "all" and one with "once".
Each trial kills the leader (kill -9, or SIGTERM) and times the signal -> the first message
the new leader put in the broker; a fresh replica replaces the old one. Afterwards every
message in the broker is checked: no slot twice ("all": every second from first to last,
exactly once; "once": no duplicate).

RedBeat (celery-redbeat from PyPI, the bench dependency group): two `celery beat -S
redbeat.RedBeatScheduler` processes on the same Redis, a 1-second job. The standby blocks in
the lock's acquire (redis-py Lock, retried every `beat_max_loop_interval`); each trial kills
the leader with kill -9 and times it to the next message in the broker.
- defaults: lock timeout 5 x max loop interval = 1,500 s, standby retry every 300 s. One trial,
  watched for REDBEAT_DEFAULT_CAP seconds: the figure is a lower bound, and the lock's own
  remaining TTL right after the kill (read from Redis) says how much longer it would take.
- tuned: lock timeout 15 s (our lease) and max loop interval 1 s (standby retry every 1 s).
RedBeat messages carry no slot id: a duplicate is a send less than half an interval after the
previous one, a missed slot a gap of more than 1.5 intervals (counted per whole interval).

Stock Celery beat (field report 003) has no standby at all: two replicas send every job twice,
one replica leaves the schedule dead after a kill -9 until something restarts it. That is not
a design anybody chooses, so it is no longer a row here.

Sends are at-least-once by design (a leader killed between the broker accepting a slot and
recording it leaves a slot the next leader resends with the same task id); executions are
made exactly once on the consumer side. "duplicate sends" counts the resent task ids.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time

import redis as sync_redis

from bench.common import BenchEnv, Proc, median, sized, table, wait_for

KILL9_TRIALS = int(os.environ.get("BENCH_FAILOVER_KILL9_TRIALS", sized(5, 1)))
SIGTERM_TRIALS = int(os.environ.get("BENCH_FAILOVER_SIGTERM_TRIALS", sized(3, 1)))
REDBEAT_TRIALS = int(os.environ.get("BENCH_FAILOVER_REDBEAT_TRIALS", sized(3, 1)))
REDBEAT_DEFAULT_CAP = float(os.environ.get("BENCH_REDBEAT_DEFAULT_CAP", sized(30, 10)))
MEASURES = ("services/beat", "libs/core", "bench/bench_failover.py")
TARGETS = {
    "ours_kill9_max_s": ("<=", 20.0, "beat kill -9 failover, max (s), 15 s lease"),
    "ours_sigterm_max_s": ("<=", 5.0, "beat SIGTERM handover, max (s)"),
    "ours_missed": ("<=", 0, "beat missed slots (catch-up all)"),
}
COMPARISONS = {
    "redbeat_tuned_over_ours_kill9": (
        "redbeat_tuned_kill9_median_s",
        "ours_kill9_median_s",
        "kill -9 failover median: RedBeat tuned (15 s lock) / ours (15 s lease)",
    ),
    "redbeat_default_over_ours_kill9": (
        "redbeat_default_kill9_lower_bound_s",
        "ours_kill9_median_s",
        "kill -9 failover: RedBeat defaults (lower bound) / ours median",
    ),
}

SCHEDULE = """
from celery_stack_beat.schedule import Entry


def schedule(settings):
    return [
        Entry("probe-all", "maintenance.bench_probe_all", 1.0, "all"),
        Entry("probe-once", "maintenance.bench_probe_once", 1.0, "once"),
    ]
"""
REDBEAT_APP = """
import os
from celery import Celery

app = Celery("redbeat_bench", broker=os.environ["REDIS_URL"])
app.conf.redbeat_redis_url = os.environ["REDIS_URL"]
app.conf.redbeat_key_prefix = os.environ["REDBEAT_PREFIX"]
app.conf.beat_schedule = {
    "probe": {"task": "redbeat.probe", "schedule": 1.0, "options": {"queue": "redbeat"}},
}
if os.environ.get("REDBEAT_TUNED"):
    app.conf.redbeat_lock_timeout = 15
    app.conf.beat_max_loop_interval = 1
"""
INTERVAL = 1.0


class Broker:
    """Messages on a Redis list (LPUSH at the head), read incrementally from the tail."""

    def __init__(self, client: sync_redis.Redis, queue: str) -> None:
        self.client, self.queue = client, queue
        self.sent: list[tuple[str, int, float]] = []  # (task id, epoch, seen at)

    def poll(self) -> list[tuple[str, int, float]]:
        new = self.client.lrange(self.queue, 0, -(len(self.sent) + 1))
        now = time.monotonic()
        for raw in reversed(new):
            headers = json.loads(raw)["headers"]
            self.sent.append((headers["id"], int(headers.get("beat_epoch") or 0), now))
        return self.sent


def _is_holder(holder: str, pid: int) -> bool:
    """The lease holder names its process: `..._host:<host>:<pid>:<boot>_...` (or the older
    `..._pid<pid>_...`)."""
    return f":{pid}:" in holder or f"_pid{pid}_" in holder


def _leader(client: sync_redis.Redis, procs: list[Proc]) -> tuple[Proc, int]:
    from celery_stack_core import keys

    found: list[tuple[Proc, int]] = []

    def check() -> bool:
        raw = client.get(keys.BEAT_LEADER)
        if not raw:
            return False
        rec = json.loads(raw)
        for p in procs:
            if p.alive() and _is_holder(rec["holder"], p.pid):
                found.append((p, int(rec["epoch"])))
                return True
        return False

    wait_for(check, 60, "a beat leader")
    return found[-1]


def _ours(env: BenchEnv) -> dict[str, float]:
    (env.work_dir / "bench_beat_schedule.py").write_text(SCHEDULE)
    client = sync_redis.Redis.from_url(env.redis_url, decode_responses=True)
    broker = Broker(client, "maintenance")
    n = 0

    def spawn() -> Proc:
        nonlocal n
        n += 1
        child = env.child_env(
            BEAT_ELECTION="redis",
            BEAT_HEARTBEAT_FILE=str(env.work_dir / f"b{n}"),
            LOG_LEVEL="INFO",  # the standby's "leader is" log line tells us it is campaigning
        )
        child["PYTHONPATH"] = str(env.work_dir)
        return env.start(
            f"beat{n}",
            [env.bin("celery-stack-beat"), "run", "--schedule", "bench_beat_schedule:schedule"],
            child,
        )

    procs = [spawn(), spawn()]
    times: dict[str, list[float]] = {"kill9": [], "sigterm": []}
    plan = ["kill9"] * KILL9_TRIALS + ["sigterm"] * SIGTERM_TRIALS
    for i, how in enumerate(plan):
        leader, epoch = _leader(client, procs)
        wait_for(lambda e=epoch: any(x[1] == e for x in broker.poll()), 60, "the leader sends")
        standby = next(p for p in procs if p is not leader and p.alive())
        wait_for(lambda s=standby: "standby: leader is" in s.output(), 60, "a standby")
        t0 = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL if how == "kill9" else signal.SIGTERM)
        wait_for(lambda e=epoch: any(x[1] > e for x in broker.poll()), 120, "failover")
        first = min(x[2] for x in broker.sent if x[1] > epoch)
        times[how].append(first - t0)
        leader.popen.wait(30)
        print(f"  trial {i + 1}/{len(plan)} {how}: {first - t0:.2f} s", flush=True)
        procs = [p for p in procs if p.alive()] + [spawn()]
    time.sleep(2.0)
    sent = broker.poll()
    ids = [x[0] for x in sent]
    duplicates = len(ids) - len(set(ids))
    dues = sorted(int(i.split(":")[2]) for i in set(ids) if i.startswith("beat:probe-all:"))
    missed = len(set(range(dues[0], dues[-1] + 1, 1000)) - set(dues)) if dues else -1
    for p in procs:
        p.stop()
    client.close()
    return {
        "kill9_median_s": median(times["kill9"]),
        "kill9_max_s": max(times["kill9"], default=float("nan")),
        "sigterm_median_s": median(times["sigterm"]),
        "sigterm_max_s": max(times["sigterm"], default=float("nan")),
        "duplicates": float(duplicates),
        "missed": float(missed),
        "sends": float(len(ids)),
    }


def _spawn_redbeat(env: BenchEnv, n: int, *, tuned: bool, prefix: str) -> Proc:
    child = env.child_env(REDBEAT_PREFIX=prefix)
    child["PYTHONPATH"] = os.pathsep.join([str(env.work_dir), child["PYTHONPATH"]])
    if tuned:
        child["REDBEAT_TUNED"] = "1"
    return env.start(
        f"redbeat{n}",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "redbeat_bench_app",
            "beat",
            "-S",
            "redbeat.RedBeatScheduler",
            "--loglevel",
            "INFO",
        ],
        child,
    )


def _gaps(times: list[float]) -> tuple[int, int]:
    """(duplicates, missed slots) of a 1-second schedule from the times its sends were seen."""
    dup = missed = 0
    for a, b in itertools.pairwise(times):
        gap = (b - a) / INTERVAL
        if gap < 0.5:
            dup += 1
        elif gap > 1.5:
            missed += round(gap) - 1
    return dup, missed


def _redbeat(env: BenchEnv, *, tuned: bool, trials: int, cap: float) -> dict[str, float]:
    (env.work_dir / "redbeat_bench_app.py").write_text(REDBEAT_APP)
    prefix = f"redbeat-{'tuned' if tuned else 'default'}"
    client = sync_redis.Redis.from_url(env.redis_url, decode_responses=True)
    client.delete("redbeat")
    seen: list[float] = []

    def poll() -> int:
        now = time.monotonic()
        n = int(client.llen("redbeat"))
        seen.extend([now] * (n - len(seen)))
        return n

    procs = [_spawn_redbeat(env, k, tuned=tuned, prefix=prefix) for k in (1, 2)]
    spawned = 2
    failover: list[float] = []
    ttl_at_kill: list[float] = []
    capped = 0
    for i in range(trials):
        wait_for(lambda ps=procs: _redbeat_leader(ps), 60, "a RedBeat leader")
        leader = next(p for p in procs if p.alive() and "Acquired lock" in p.output())
        standby = next(p for p in procs if p is not leader and p.alive())
        wait_for(lambda s=standby: "beat: Starting" in s.output(), 60, "a RedBeat standby")
        start = poll()
        wait_for(lambda s=start: poll() >= s + 3, 60, "the RedBeat leader sends")
        time.sleep(1.0)  # the standby has tried the lock once and sleeps in its acquire loop
        os.kill(leader.pid, signal.SIGKILL)
        t0 = time.monotonic()
        leader.popen.wait(30)
        ttl_at_kill.append(client.pttl(f"{prefix}:lock") / 1000)
        before = poll()
        try:
            wait_for(lambda b=before: poll() > b, cap, "RedBeat failover", interval=0.02)
            failover.append(seen[before] - t0)
        except TimeoutError:
            capped += 1
            failover.append(cap)
        print(
            f"  RedBeat {'tuned' if tuned else 'defaults'} trial {i + 1}/{trials}: "
            f"{'> ' if capped else ''}{failover[-1]:.2f} s (lock TTL at kill "
            f"{ttl_at_kill[-1]:.1f} s)",
            flush=True,
        )
        spawned += 1
        procs = [p for p in procs if p.alive()] + [
            _spawn_redbeat(env, spawned, tuned=tuned, prefix=prefix)
        ]
    if not capped:
        time.sleep(3 * INTERVAL)
        poll()
    # a capped trial's silence until now counts as missed slots
    watched = [*seen, time.monotonic()] if capped else seen
    for p in procs:
        p.stop()
    dup, missed = _gaps(watched)
    client.close()
    return {
        "median_s": median(failover),
        "max_s": max(failover),
        "capped": float(capped),
        "lock_ttl_at_kill_s": median(ttl_at_kill),
        "duplicates": float(dup),
        "missed": float(missed),
        "sends": float(len(seen)),
    }


def _redbeat_leader(procs: list[Proc]) -> bool:
    return any(p.alive() and "Acquired lock" in p.output() for p in procs)


def run(env: BenchEnv) -> dict[str, float]:
    settings = env.settings()
    lease = settings.beat.lease_duration
    print(
        f"ours: lease {lease:g} s / renew deadline {settings.beat.renew_deadline:g} s / "
        f"retry {settings.beat.retry_period:g} s / tick {settings.beat.tick:g} s; "
        f"{KILL9_TRIALS} kill -9 and {SIGTERM_TRIALS} SIGTERM trials",
        flush=True,
    )
    ours = _ours(env)
    tuned = _redbeat(env, tuned=True, trials=REDBEAT_TRIALS, cap=120)
    default = _redbeat(env, tuned=False, trials=1, cap=REDBEAT_DEFAULT_CAP)
    capped = "> " if default["capped"] else ""
    print(
        table(
            "beat: kill -9 of the leader -> next send",
            ["", "ours (15 s lease, fenced)", "RedBeat tuned (15 s lock)", "RedBeat defaults"],
            [
                [
                    "kill -9 failover median (s)",
                    ours["kill9_median_s"],
                    tuned["median_s"],
                    f"{capped}{default['median_s']:.1f}",
                ],
                [
                    "kill -9 failover max (s)",
                    ours["kill9_max_s"],
                    tuned["max_s"],
                    f"{capped}{default['max_s']:.1f}",
                ],
                [
                    "lock/lease TTL left at the kill (s)",
                    "-",
                    tuned["lock_ttl_at_kill_s"],
                    default["lock_ttl_at_kill_s"],
                ],
                [
                    "SIGTERM handover median / max (s)",
                    f"{ours['sigterm_median_s']:.2f} / {ours['sigterm_max_s']:.2f}",
                    "-",
                    "-",
                ],
                ["duplicate sends", ours["duplicates"], tuned["duplicates"], default["duplicates"]],
                ["missed slots", ours["missed"], tuned["missed"], default["missed"]],
                ["sends", ours["sends"], tuned["sends"], default["sends"]],
            ],
        )
    )
    if default["capped"]:
        print(
            f"RedBeat defaults: no send within {REDBEAT_DEFAULT_CAP:g} s of the kill; its lock "
            f"still had {default['lock_ttl_at_kill_s']:.0f} s to live, and the standby retries "
            "the lock every 300 s, so the failover takes that long plus up to 300 s."
        )
    figures = {
        "lease_s": lease,
        **{f"ours_{k}": v for k, v in ours.items()},
        **{f"redbeat_tuned_{k}": v for k, v in tuned.items() if k not in ("median_s", "max_s")},
        "redbeat_tuned_kill9_median_s": tuned["median_s"],
        "redbeat_tuned_kill9_max_s": tuned["max_s"],
        **{f"redbeat_default_{k}": v for k, v in default.items() if k not in ("median_s", "max_s")},
        "redbeat_default_kill9_lower_bound_s"
        if default["capped"]
        else "redbeat_default_kill9_median_s": default["median_s"],
    }
    if not default["capped"]:
        figures["redbeat_default_kill9_lower_bound_s"] = default["median_s"]
    return figures


if __name__ == "__main__":
    sys.exit("run through `python -m bench failover`")
