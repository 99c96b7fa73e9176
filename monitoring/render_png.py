"""Render a dashboard's panels from a real Prometheus into a PNG with matplotlib (Grafana
itself is not installable here: not in Debian, not on PyPI or npm). Used for the README's
picture:

    python -m monitoring.render_png --prometheus http://127.0.0.1:9090 --dashboard overview \
        --minutes 10 --out docs/images/overview.png

Each panel is drawn from the same PromQL as the generated dashboard JSON (query_range), legend
templates filled from the series' labels.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from monitoring import dashboards

_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    params = {"query": expr, "start": start, "end": end, "step": step}
    r = httpx.get(f"{base}/api/v1/query_range", params=params, timeout=30)
    r.raise_for_status()
    result: list[dict] = r.json()["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        return ",".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template)


def render(base: str, stem: str, minutes: float, out: Path) -> None:
    title, _, layout = dashboards.DASHBOARDS[stem]
    panels = [p for _, row in layout() for p in row]
    end = time.time()
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 240)
    cols = 2
    rows = math.ceil(len(panels) / cols)
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for q in panel.queries:
            for series in query_range(base, q.expr, start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.4, label=legend(q.legend, series["metric"]))
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.set_xlabel("minutes ago", fontsize=8)
        ax.set_ylabel(panel.unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{title} (rendered from Prometheus with matplotlib)", fontsize=13)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", default="overview", choices=sorted(dashboards.DASHBOARDS))
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("docs/images/overview.png"))
    args = parser.parse_args(argv)
    render(args.prometheus, args.dashboard, args.minutes, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
