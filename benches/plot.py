"""A PNG bar chart of a benchmark result file (shared/BENCHMARKS.md): one panel per case and
metric, one bar per impl, values printed on the bars. GEMM results (``bench == "gemm"``) are drawn
instead as microseconds against M, log-log, one panel per weight shape (N x K) and impl group.

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
    if doc.get("bench") == "gemm":
        return _plot_gemm(doc, Path(png), plt)

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


def _plot_gemm(doc: dict, png: Path, plt) -> Path:
    """us vs M, log-log: one row of panels per N x K, one column per group of ``doc["plot_groups"]``
    (4-bit / 8-bit weights; every impl in one panel without it). motensor solid, peers dashed,
    rooflines dotted; rows with a null value and ``*_gemm`` rows are left out."""
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in doc["rows"]:
        if r.get("metric") != "us" or r.get("value") is None or r["impl"].endswith("_gemm"):
            continue
        m, n, k = (int(v) for v in r["case"].split("x"))
        series.setdefault(f"{n}x{k}", {}).setdefault(r["impl"], []).append((m, r["value"]))
    groups = {g: set(v) for g, v in (doc.get("plot_groups") or {}).items() if v} or {"all": None}
    impls = sorted({i for s in series.values() for i in s})
    cmap = plt.get_cmap("tab20")
    color = {impl: cmap(i % 20) for i, impl in enumerate(impls)}
    ms = sorted({m for s in series.values() for pts in s.values() for m, _ in pts})
    shapes = list(series)
    nrows, ncols = max(1, len(shapes)), len(groups)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7.6 * ncols, 4.0 * nrows), squeeze=False)
    for row, shape in zip(axes, shapes or [""]):
        for ax, (gname, members) in zip(row, groups.items()):
            drawn = 0
            for impl, pts in sorted(series.get(shape, {}).items()):
                if members is not None and impl not in members:
                    continue
                pts.sort()
                roof, mo = impl.startswith("roofline"), impl.startswith("motensor")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ":" if roof else "-" if mo else "--",
                        marker=None if roof else "o" if mo else "s", markersize=3, color=color[impl],
                        linewidth=1.8 if mo else 1.2, label=impl)
                drawn += 1
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            if ms:
                ax.set_xticks(ms, [str(m) for m in ms])
            ax.set_xlabel("M (tokens)", fontsize=8)
            ax.set_ylabel("us (log)", fontsize=8)
            ax.set_title(f"N x K = {shape}" + ("" if members is None else f" - {gname}"), fontsize=9)
            ax.grid(True, which="both", alpha=0.25)
            ax.tick_params(labelsize=7)
            if drawn:
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    gpu = doc.get("machine", {}).get("gpu") or "CPU only"
    fig.suptitle(f"{doc['bench']} - {gpu} - {doc['when'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    for arg in sys.argv[1:] or sys.exit("usage: python benches/plot.py RESULT.json ..."):
        print(plot_results(arg))
