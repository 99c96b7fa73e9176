"""The bench summary (bench/report.py): verdicts, ratios, "not available", staleness, and the
README block it regenerates. No servers: the harness only, on a made-up results file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench import report

HEAD = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=report.ROOT, capture_output=True, text=True, check=True
).stdout.strip()
FIRST = subprocess.run(
    ["git", "rev-list", "--max-parents=0", "HEAD"],
    cwd=report.ROOT,
    capture_output=True,
    text=True,
    check=True,
).stdout.split()[0]


def _entry(commit: str, figures: dict[str, float]) -> dict[str, object]:
    return {
        "commit": commit[:10],
        "commit_full": commit,
        "dirty": False,
        "at": "2026-11-29T12:00:00+00:00",
        "figures": figures,
        "targets": {
            "ours_over_bare": [">=", 0.7, "ours / bare"],
            "rate": [">=", 100, "rate"],
            "p99": ["<=", 25, "p99 ms"],
            "bulk": [">=", 200_000, "bulk increments/s"],
        },
        "comparisons": {"ours_over_bare": ["ours", "bare", "flush: ours / bare"]},
        "measures": ["bench/bench_flush.py"],
        "error": None,
    }


def test_rows_give_ratios_verdicts_and_not_available() -> None:
    figures = {"ours": 50.0, "bare": 100.0, "rate": 150.0, "p99": 30.0, "bulk": float("nan")}
    rows = {r[1]: r for r in report.rows({"flush": _entry(HEAD, figures)})}
    assert rows["flush: ours / bare"][2:6] == ["0.5x", "50.0 / 100.0", ">= 0.7", "MISSED"]
    assert rows["rate"][5] == "met"
    assert rows["p99 ms"][5] == "MISSED"
    assert rows["bulk increments/s"][2] == "not available"
    assert rows["bulk increments/s"][5] == "n/a"
    assert rows["rate"][6] == HEAD[:10]


def test_a_figure_measured_before_the_code_changed_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "code.py").write_text("v1\n")
    (tmp_path / "other.py").write_text("x\n")
    git("add", "-A")
    git("commit", "-qm", "one")
    old = git("rev-parse", "HEAD")
    (tmp_path / "code.py").write_text("v2\n")
    git("commit", "-qam", "two")
    new = git("rev-parse", "HEAD")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    assert report.staleness({"commit_full": old}, ("code.py",)).startswith("STALE")
    assert report.staleness({"commit_full": old}, ("other.py",)) == ""
    assert report.staleness({"commit_full": new}, ("code.py",)) == ""
    assert report.staleness({"commit_full": new, "dirty": True}, ("code.py",)) != ""
    (tmp_path / "code.py").write_text("v3, not committed\n")
    assert report.staleness({"commit_full": new}, ("code.py",)).startswith("STALE")
    assert report.staleness({}, ("code.py",)).startswith("STALE")


def test_readme_block_is_replaced_between_the_markers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# kept\n\n{report.BEGIN}\nold figures\n{report.END}\n\ntail kept\n")
    monkeypatch.setattr(report, "README", readme)
    report.write_readme({"flush": _entry(HEAD, {"ours": 1.0, "bare": 2.0, "rate": 1.0})})
    text = readme.read_text()
    assert "old figures" not in text
    assert text.startswith("# kept") and text.rstrip().endswith("tail kept")
    assert "| flush | flush: ours / bare | 0.5x |" in text
    assert f"commit {HEAD[:10]}" in text
