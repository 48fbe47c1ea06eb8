"""A PNG bar chart of a benchmark result file (shared/BENCHMARKS.md): one panel per case and
metric, one bar per impl, values printed on the bars.

Usage: ``python benches/plot.py benches/results/load-h100-20261124.json`` (writes the ``.png``
beside it). matplotlib is imported only here and only when a plot is drawn; without it the plot
is skipped with a message (the device machines have it; requirements/test.txt does not).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def plot_results(doc: dict | str | Path, png: str | Path | None = None) -> Path | None:
    """Draws ``doc`` (a result dict or the path of its JSON) into ``png`` (default: beside the
    JSON). Returns the PNG path, or None if matplotlib is missing."""
    if not isinstance(doc, dict):
        src = Path(doc)
        doc = json.loads(src.read_text())
        png = png or src.with_suffix(".png")
    if png is None:
        raise ValueError("png path needed when plotting a dict")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"plot skipped: matplotlib is not installed ({png} not written)")
        return None

    panels: dict[tuple[str, str], list[dict]] = {}
    for row in doc["rows"]:
        panels.setdefault((row["case"], row["metric"]), []).append(row)
    n = max(1, len(panels))
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 0.45 * max(len(v) for v in panels.values() or [[0]]) * nrows + 1.6 * nrows), squeeze=False)
    for ax, ((case, metric), rows) in zip(axes.flat, panels.items()):
        names = [r["impl"] for r in rows]
        values = [r["value"] for r in rows]
        colors = ["tab:green" if n.startswith("motensor") else "tab:gray" if n.endswith("limit") else "tab:blue" for n in names]
        ax.barh(range(len(rows)), values, color=colors)
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{case} ({metric})", fontsize=9)
        top = max(values) if values else 1
        for i, v in enumerate(values):
            ax.text(v + top * 0.01, i, f"{v:.3g}", va="center", fontsize=7)
        ax.set_xlim(0, top * 1.18 if top > 0 else 1)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    gpu = doc.get("machine", {}).get("gpu") or "CPU only"
    fig.suptitle(f"{doc['bench']} - {gpu} - {doc['when'][:10]}", fontsize=10)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    for arg in sys.argv[1:] or sys.exit("usage: python benches/plot.py RESULT.json ..."):
        print(plot_results(arg))
