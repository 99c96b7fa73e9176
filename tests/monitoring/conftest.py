"""monitoring/ is a top-level folder run as `python -m monitoring.generate`: put the repository
root on sys.path for its tests (pytest runs with --import-mode=importlib)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
