"""Init container: block until the schema is at head (`celery-stack-migrate --check` in a loop).

Mounted from the chart's scripts ConfigMap and run by the image's Python (exec form, no shell).
Usage: python wait_for_migrations.py [interval-seconds]
"""

from __future__ import annotations

import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    interval = float(argv[0]) if argv else 5.0
    while True:
        # --check exits 0 only once the database answers and its revision is the image's head.
        if subprocess.run(["celery-stack-migrate", "--check"], check=False).returncode == 0:
            return 0
        print(f"schema not at head yet; checking again in {interval:g}s", flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
