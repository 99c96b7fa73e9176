"""Provenance and the summary: which commit a figure was measured at, whether the code it
measures changed since (stale), targets met or MISSED, and bench/README.md's generated tables.

Every bench module declares, beside `run(env) -> dict[str, float]`:

- `TARGETS = {key: ("<=" | ">=", number, "what")}`: a target on a figure (or on a comparison);
- optionally `COMPARISONS = {key: (numerator_key, denominator_key, "what")}`: a ratio of two of
  its figures, printed with both (a key may also be a TARGETS key);
- optionally `MEASURES = ("path", ...)`: the code its figures depend on (default: libs/ and
  services/); a figure measured at a commit older than the last change to those paths is STALE.

bench/results/latest.json keeps one entry per bench (replaced when it runs again), each with
the commit (and whether the tree was dirty), the date and the load average; the summary and the
README are generated from it, so a figure never appears without where it came from.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LATEST = RESULTS / "latest.json"
QUICK = RESULTS / "quick.json"  # --quick runs: small sizes, never in the README
README = ROOT / "bench" / "README.md"
DEFAULT_MEASURES = ("libs", "services")
BEGIN, END = "<!-- bench:generated:begin -->", "<!-- bench:generated:end -->"
# Changes to these never make a figure stale or the tree dirty: they are the output.
OUTPUTS = ("bench/results", "bench/README.md")


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def git_state() -> dict[str, Any]:
    """The commit the code under test is at, and whether the work tree differs from it."""
    rev = _git("rev-parse", "--verify", "-q", "HEAD")
    head = rev.stdout.strip() if rev.returncode == 0 else ""
    excludes = [f":(exclude){p}" for p in OUTPUTS]
    dirty = bool(_git("status", "--porcelain", "--", ".", *excludes).stdout.strip())
    return {
        "commit": head[:10] or "unknown",
        "commit_full": head or None,
        "dirty": dirty,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_1m": round(os.getloadavg()[0], 2),
    }


def staleness(entry: dict[str, Any], measures: tuple[str, ...]) -> str:
    """'' when the figure was measured on the code as it is now; else why it is stale."""
    commit = entry.get("commit_full")
    if not commit:
        return "STALE: no commit recorded"
    paths = [p for p in measures if (ROOT / p).exists()]
    changed = _git("diff", "--name-only", commit, "--", *paths)
    if changed.returncode != 0:
        return f"STALE: commit {commit[:10]} unknown here"
    if changed.stdout.strip():
        n = len(changed.stdout.split())
        return f"STALE: {n} measured file(s) changed since {commit[:10]}"
    if entry.get("dirty"):
        return "measured on a dirty tree"
    return ""


def load_runs(path: Path = LATEST) -> dict[str, Any]:
    try:
        runs: dict[str, Any] = json.loads(path.read_text()).get("runs", {})
    except (OSError, ValueError):
        return {}
    return runs


def save_runs(runs: dict[str, Any], path: Path = LATEST) -> None:
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps({"runs": runs}, indent=2, sort_keys=True) + "\n")


def declared(module: ModuleType) -> dict[str, Any]:
    """What a bench module declares about its figures (JSON-able, kept with each run)."""
    return {
        "targets": {k: list(v) for k, v in getattr(module, "TARGETS", {}).items()},
        "comparisons": {k: list(v) for k, v in getattr(module, "COMPARISONS", {}).items()},
        "measures": list(getattr(module, "MEASURES", DEFAULT_MEASURES)),
    }


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt(value: float) -> str:
    if math.isnan(value):
        return "not available"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def rows(runs: dict[str, Any]) -> list[list[str]]:
    """One row per comparison and per target of every bench that has run."""
    out: list[list[str]] = []
    for name in sorted(runs):
        entry = runs[name]
        figures = {k: _num(v) for k, v in (entry.get("figures") or {}).items()}
        stale = staleness(entry, tuple(entry.get("measures") or DEFAULT_MEASURES))
        where = f"{entry.get('commit', '?')}{' +dirty' if entry.get('dirty') else ''}"
        when = str(entry.get("at", "?"))[:16].replace("T", " ")
        if entry.get("error"):
            out.append([name, "FAILED", entry["error"][:80], "", "", "FAILED", where, when, stale])
            continue
        comparisons = entry.get("comparisons") or {}
        for key, (num, den, _what) in comparisons.items():
            figures.setdefault(key, figures.get(num, math.nan) / figures.get(den, math.nan))
        shown: set[str] = set()
        for key, (num, den, what) in comparisons.items():
            target = (entry.get("targets") or {}).get(key)
            out.append(
                _row(
                    name,
                    what,
                    figures[key],
                    f"{fmt(figures.get(num, math.nan))} / {fmt(figures.get(den, math.nan))}",
                    target,
                    where,
                    when,
                    stale,
                    x=True,
                )
            )
            shown.add(key)
        for key, target in (entry.get("targets") or {}).items():
            if key not in shown:
                value = figures.get(key, math.nan)
                out.append(_row(name, target[2], value, key, target, where, when, stale))
    return out


def _row(  # noqa: PLR0913, PLR0917 - one argument per column of the table's row
    name: str,
    what: str,
    value: float,
    of: str,
    target: list[Any] | None,
    where: str,
    when: str,
    stale: str,
    *,
    x: bool = False,
) -> list[str]:
    shown = fmt(value) + ("x" if x and not math.isnan(value) else "")
    if target is None:
        return [name, what, shown, of, "-", "-", where, when, stale]
    op, bound = target[0], float(target[1])
    if math.isnan(value):
        verdict = "n/a"
    else:
        verdict = "met" if (value <= bound if op == "<=" else value >= bound) else "MISSED"
    return [name, what, shown, of, f"{op} {fmt(bound)}", verdict, where, when, stale]


HEADER = [
    "bench",
    "comparison / figure",
    "value",
    "of",
    "target",
    "verdict",
    "commit",
    "date (UTC)",
    "note",
]


def text_table(table: list[list[str]]) -> str:
    cells = [HEADER, *table]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(table: list[list[str]]) -> str:
    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "/") or " " for c in r) + " |"

    return "\n".join([line(HEADER), line(["---"] * len(HEADER)), *map(line, table)])


def figures_markdown(runs: dict[str, Any]) -> str:
    """Every figure of every bench, with where and when it was measured."""
    parts: list[str] = []
    for name in sorted(runs):
        e = runs[name]
        stale = staleness(e, tuple(e.get("measures") or DEFAULT_MEASURES))
        head = (
            f"#### {name}: commit {e.get('commit')}{' (dirty tree)' if e.get('dirty') else ''}, "
            f"{e.get('at')}, 1-minute load {e.get('load_1m_at_start')} at start, "
            f"{e.get('seconds')} s"
        )
        parts.append(head + (f" — **{stale}**" if stale else ""))
        figs = e.get("figures") or {}
        if e.get("error"):
            parts.append(f"\nFAILED: `{e['error'][:300]}`")
        if figs:
            parts.append("\n| figure | value |\n| --- | ---: |")
            parts.extend(f"| {k} | {fmt(_num(v))} |" for k, v in sorted(figs.items()))
        parts.append("")
    return "\n".join(parts)


def write_readme(runs: dict[str, Any]) -> None:
    """Replace the generated part of bench/README.md (between the markers) with this run's."""
    state = git_state()
    block = "\n".join(
        [
            BEGIN,
            "<!-- written by `python -m bench` from bench/results/latest.json; do not edit -->",
            "",
            f"Generated {state['at']} at commit {state['commit']}"
            f"{' (dirty tree)' if state['dirty'] else ''}. A row marked STALE was measured at an "
            "older commit than the code it measures; re-run that bench.",
            "",
            markdown_table(rows(runs)),
            "",
            "### Every figure, per bench",
            "",
            figures_markdown(runs),
            END,
        ]
    )
    text = README.read_text() if README.exists() else ""
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Figures\n\n" + block + "\n"
    README.write_text(text)
