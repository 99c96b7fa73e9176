"""`python -m bench [name ...]`: start throwaway servers, run the benchmarks, print a summary.

Each `bench/bench_<name>.py` exposes `run(env) -> dict[str, float]`; they run one after the
other on the same servers (data reset between them) and their figures go to
bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, bench_env, fmt, machine

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {available})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")
    names = args.names or available

    results: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    timings: dict[str, float] = {}
    loads: dict[str, float] = {}
    print(f"machine: {machine()}")
    with bench_env() as env:
        print(f"servers: PostgreSQL (fsync on) + Redis (AOF, appendfsync always) in {env.work_dir}")
        for name in names:
            print(f"\n=== {name} ===", flush=True)
            env.reset()
            loads[name] = os.getloadavg()[0]  # other work on the machine skews every figure
            started = time.monotonic()
            try:
                module = importlib.import_module(f"bench.bench_{name}")
                results[name] = {k: float(v) for k, v in module.run(env).items()}
            except Exception as exc:  # one failing bench must not hide the others' figures
                traceback.print_exc()
                errors[name] = repr(exc)
            finally:
                env.close()  # any process a bench left running
            timings[name] = time.monotonic() - started

    print("\n=== summary ===")
    for name in names:
        if name in errors:
            print(f"{name}: FAILED {errors[name]}")
            continue
        figures = ", ".join(f"{k}={fmt(v)}" for k, v in results[name].items())
        print(f"{name} ({timings[name]:.0f}s): {figures}")

    # One entry per benchmark, replaced when it runs again: `python -m bench flush` keeps the
    # last figures of the others.
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.json"
    try:
        runs: dict[str, Any] = json.loads(latest.read_text()).get("runs", {})
    except (OSError, ValueError):
        runs = {}
    at = datetime.now(UTC).isoformat(timespec="seconds")
    for name in names:
        runs[name] = {
            "at": at,
            "machine": machine(),
            "load_1m_at_start": loads.get(name),
            "seconds": round(timings[name], 1),
            "figures": results.get(name, {}),
            "error": errors.get(name),
        }
    latest.write_text(json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")
    print(f"\nwritten {latest}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
