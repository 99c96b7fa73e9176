"""`python -m bench [--quick] [name ...]`: start throwaway servers, run the benchmarks, print one
summary table, regenerate bench/README.md's tables.

Each `bench/bench_<name>.py` exposes `run(env) -> dict[str, float]` and `TARGETS` (see
bench/report.py); they run one after the other on the same servers (data reset between them).
Their figures go to bench/results/latest.json with the commit, the date and the load average.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.common import bench_env, machine

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {available})")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: check that the benches run"
    )
    parser.add_argument(
        "--summary", action="store_true", help="run nothing: print the summary, rewrite README"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available}")
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    names = [] if args.summary else args.names or available

    results = report.QUICK if args.quick else report.LATEST
    runs = report.load_runs(results)
    failed = False
    if names:
        print(f"machine: {machine()}")
        with bench_env() as env:
            print(
                f"servers: PostgreSQL (fsync on) + Redis (AOF, appendfsync always), {env.work_dir}"
            )
            for name in names:
                runs[name] = _one(env, name, quick=args.quick)
                failed |= bool(runs[name]["error"])
                report.save_runs(runs, results)  # a later failure keeps the figures so far
    print("\n=== summary ===")
    print(report.text_table(report.rows(runs)))
    if args.quick:
        print("\n--quick: figures at small sizes are not written to bench/README.md")
    else:
        report.write_readme(runs)
        written = f"{report.LATEST.relative_to(report.ROOT)} and " if names else ""
        print(f"\nwritten {written}bench/README.md")
    return 1 if failed else 0


def _one(env: object, name: str, *, quick: bool) -> dict[str, object]:
    print(f"\n=== {name} ===", flush=True)
    env.reset()  # type: ignore[attr-defined]
    state = report.git_state()
    started = time.monotonic()
    figures: dict[str, float] = {}
    error = None
    meta: dict[str, object] = {}
    try:
        module = importlib.import_module(f"bench.bench_{name}")
        meta = report.declared(module)
        figures = {k: float(v) for k, v in module.run(env).items()}
    except Exception as exc:  # one failing bench must not hide the others' figures
        traceback.print_exc()
        error = repr(exc)
    finally:
        env.close()  # type: ignore[attr-defined]  # any process a bench left running
    return {
        **state,
        **meta,
        "quick": quick,
        "machine": machine(),
        "load_1m_at_start": state["load_1m"],
        "load_1m_at_end": round(os.getloadavg()[0], 2),
        "seconds": round(time.monotonic() - started, 1),
        "figures": figures,
        "error": error,
    }


if __name__ == "__main__":
    sys.exit(main())
