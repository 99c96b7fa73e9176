"""The root Dockerfile: hadolint clean, and the properties issues 5 and 12 ask for, read from the
file. The image is built and run for real by tests/e2e/test_image.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from chartlib import ROOT, tool

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> list[str]:
    return re.split(r"(?m)^FROM ", DOCKERFILE)[1:]


def test_hadolint_clean():
    proc = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_multi_stage_lockfile_install_with_a_cached_dependency_layer():
    assert len(stages()) >= 3
    build = next(s for s in stages() if " AS build" in s.splitlines()[0])
    syncs = re.findall(r"uv sync ([^\n]*)", build)
    assert "--frozen" in syncs[0] and "--no-install-workspace" in syncs[0]
    assert "--frozen" in syncs[1] and "--no-editable" in syncs[1] and "--no-dev" in syncs[1]
    # dependencies are installed before the sources are copied
    assert build.index("--no-install-workspace") < build.index("COPY . .")


def test_final_stage_is_non_root_without_build_tools():
    final = stages()[-1]
    assert "AS runtime" in final.splitlines()[0]
    assert re.search(r"(?m)^USER 10001:10001$", final)
    assert "uv" not in re.sub(r"/app/\.venv|UV_\w+", "", final.split("\n", 1)[1]).split()
    for tool_name in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool_name not in final


def test_exec_form_so_the_service_is_pid_1():
    final = stages()[-1]
    cmd = re.search(r"(?m)^CMD (.*)$", final)
    assert cmd and cmd.group(1).startswith("[")
    assert "ENTRYPOINT" not in final or re.search(r"(?m)^ENTRYPOINT \[", final)


def test_dockerignore_keeps_the_context_small_and_secret_free():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".tools", ".run", "charts", "k8s", "tests"):
        assert entry in ignored


def _uv() -> str:
    local = ROOT / ".tools" / "bin" / "uv"
    found = shutil.which("uv")
    return found or str(local)


def _copy(src: Path, dst: Path, keep) -> None:
    skip = {".git", ".venv", ".tools", ".run", "__pycache__", ".pytest_cache", ".mypy_cache"}
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if skip & set(rel.parts) or not path.is_file() or not keep(rel):
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)


def test_install_steps_yield_every_entrypoint_the_chart_runs(tmp_path):
    """No Docker engine here, so the build stage's two `uv sync` steps run as written (same
    flags, same exclusions) into a scratch venv: the dependency layer installs no workspace
    package, and the final venv holds every console script the chart uses - real installs,
    without the development members."""
    build = next(s for s in stages() if " AS build" in s.splitlines()[0])
    m = re.search(r'ARG UV_EXCLUDE="([^"]+)"', build)
    assert m
    exclude = m.group(1).split()
    steps = [
        [a for a in shlex.split(cmd) if a != "${UV_EXCLUDE}"] + exclude
        for cmd in re.findall(r"uv sync ([^\n]*)", build)
    ]
    src, venv = tmp_path / "src", tmp_path / "venv"
    # hardlinks from uv's cache where the filesystem allows (the image build copies; same result)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_LINK_MODE": "hardlink"}
    env.pop("VIRTUAL_ENV", None)

    def sync(args: list[str]) -> None:
        proc = subprocess.run(
            [_uv(), "sync", "--quiet", *args], cwd=src, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr

    _copy(ROOT, src, lambda rel: rel.name in ("pyproject.toml", "uv.lock"))
    sync(steps[0])
    site = next(venv.glob("lib/python3*/site-packages"))
    assert (site / "celery").is_dir() and not (site / "celery_stack_core").exists()

    _copy(ROOT, src, lambda rel: rel.parts[0] in ("libs", "services") and "tests" not in rel.parts)
    sync(steps[1])
    for script in (
        "celery-stack-api",
        "celery-stack-worker-counters",
        "celery-stack-worker-scans",
        "celery-stack-worker-maintenance",
        "celery-stack-beat",
        "celery-stack-migrate",
    ):
        assert (venv / "bin" / script).exists(), script
    assert (site / "celery_stack_core" / "alembic" / "versions").is_dir()  # not editable
    assert not (site / "celery_stack_devstack").exists()
    assert not (site / "pgserver").exists()


def test_base_images_are_build_args_defaulting_to_the_official_images():
    """No `# syntax=` line (fetching a frontend needs a registry), and every FROM names a build
    argument whose default is today's official image, so `make image` can pass local bases."""
    assert not re.search(r"(?m)^#\s*syntax=", DOCKERFILE)
    args = dict(re.findall(r"(?m)^ARG (\w+_IMAGE)=(\S+)$", DOCKERFILE))
    assert args == {
        "PYTHON_IMAGE": "python:3.11-slim-bookworm",
        "UV_IMAGE": "ghcr.io/astral-sh/uv:0.13.9",
    }
    froms = re.findall(r"(?m)^FROM (\S+)", DOCKERFILE)
    assert froms and all(f in ("${PYTHON_IMAGE}", "${UV_IMAGE}") for f in froms)
    # the ARGs come before the first FROM (global scope)
    assert DOCKERFILE.index("ARG PYTHON_IMAGE") < DOCKERFILE.index("FROM ")


def test_make_image_builds_for_real_with_local_bases_where_no_registry_answers():
    build = (ROOT / "scripts" / "image" / "build.sh").read_text()
    bases = (ROOT / "scripts" / "image" / "local-bases.sh").read_text()
    assert "scripts/image/build.sh" in (ROOT / "Makefile").read_text()
    assert "local-bases.sh" in build and "size" in build
    assert "debootstrap --variant=minbase bookworm" in bases
    assert "docker" in bases.lower() and "import" in bases
    assert "pip download" in bases and '"uv==${UV_VERSION}"' in bases  # uv from PyPI
