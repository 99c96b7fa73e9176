"""Chart tests' fixtures. The tools (helm, kubectl, checkov, kubernetes-validate, hadolint) are
installed by tests/chart/fetch_tools.py into .tools/ - by `make tools`, or by the session fixture
below on first use - never by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
# The tests import chartlib (helpers) by name: pytest runs with --import-mode=importlib.
sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session", autouse=True)
def chart_tools() -> None:
    """Project-owned install of the chart tools (a no-op once .tools/ has them)."""
    if os.environ.get("CELERY_STACK_SKIP_TOOL_FETCH"):
        return
    subprocess.run([sys.executable, str(HERE / "fetch_tools.py")], check=True, capture_output=True)


@pytest.fixture(scope="session")
def matrix_docs() -> dict[str, list[dict[str, Any]]]:
    """Every MATRIX combination rendered once (render cache), by combination id."""
    from chartlib import MATRIX, render_chart, strip

    return {
        ident: [strip(d) for d in render_chart(values, api_versions=apis)]
        for ident, values, apis in MATRIX
    }


@pytest.fixture(scope="session")
def matrix_dir(
    matrix_docs: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same renders as files <dir>/<id>.yaml, for the external checkers."""
    from chartlib import dump_all

    out = tmp_path_factory.mktemp("matrix")
    for ident, docs in matrix_docs.items():
        (out / f"{ident}.yaml").write_text(dump_all(docs))
    return out
