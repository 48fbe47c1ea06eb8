#!/usr/bin/env python
"""What scale validation costs: ``motensor.load(..., device="cpu")`` of a synthetic Llama-shaped
ModelOpt checkpoint with ``validate_scales=True`` against ``validate_scales=False`` (issue 8:
"load speed on the CPU is not measurably slower with validation on").

Validation checks the per-tensor scalars when the checkpoint is opened (a few bytes per module,
read in parallel) and the block / group scales while the fill copies them (a branch-free pass
over bytes already in cache). Each timed run is a whole ``motensor.load`` (open included), the
page cache warm, the two settings interleaved (on, off, off, on, ...) so that drift of a shared
machine hits both alike; ``open`` alone is timed the same way, as the scalar checks live there.

Per format (case ``<shape>-<format>-warm``): ``motensor_validate`` / ``motensor_no_validate``
rows with metrics ``s_min``, ``s_median`` (whole load) and ``GB/s`` (tensor bytes / min s),
``open_ms_min`` (open alone); and ``validate_over_no_validate`` with ``ratio_min`` and
``ratio_median`` (time with / time without; 1.0 = free).

Usage: ``python benches/validate_scales.py [--shape 1b] [--formats nvfp4 w4a16_awq]
[--repeats 9]``; ``--smoke``: the tiny shape, 2 repeats (tests the harness). Writes
``benches/results/validate_scales-cpu-<date>.json`` and its PNG.
"""
from __future__ import annotations

import argparse
import gc
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (benches/common.py)
import synthetic  # noqa: E402  (benches/synthetic.py)

#: The two settings compared, by impl name.
SETTINGS = {"motensor_validate": True, "motensor_no_validate": False}


def _seconds(fn: Callable[[], object]) -> float:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    del out
    return seconds


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Runs each function ``repeats`` times, alternating the order every round (ABBA...), after
    one untimed warm-up each."""
    for fn in fns.values():
        _seconds(fn)
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(_seconds(fns[name]))
    return times


def measure(path: Path, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of whole loads and of opens, per setting."""
    import motensor

    loads = {k: (lambda v=v: motensor.load(path, "cpu", progress=False, validate_scales=v)) for k, v in SETTINGS.items()}
    opens = {k: (lambda v=v: motensor.open(path, validate_scales=v)) for k, v in SETTINGS.items()}
    return {"load": _interleaved(loads, repeats), "open": _interleaved(opens, max(repeats, 5))}


def rows_for(case: str, nbytes: int, m: dict[str, dict[str, list[float]]]) -> list[dict]:
    rows: list[dict] = []
    for impl in SETTINGS:
        runs = m["load"][impl]
        note = "runs (s): " + ", ".join(f"{x:.5f}" for x in runs)
        rows += [
            {"case": case, "impl": impl, "metric": "s_min", "value": round(min(runs), 5), "note": note},
            {"case": case, "impl": impl, "metric": "s_median", "value": round(statistics.median(runs), 5)},
            {"case": case, "impl": impl, "metric": "GB/s", "value": round(nbytes / 1e9 / min(runs), 4)},
            {"case": case, "impl": impl, "metric": "open_ms_min", "value": round(1e3 * min(m["open"][impl]), 3)},
        ]
    on, off = m["load"]["motensor_validate"], m["load"]["motensor_no_validate"]
    rows += [
        {"case": case, "impl": "validate_over_no_validate", "metric": "ratio_min", "value": round(min(on) / min(off), 4)},
        {"case": case, "impl": "validate_over_no_validate", "metric": "ratio_median",
         "value": round(statistics.median(on) / statistics.median(off), 4)},
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1b", choices=sorted(synthetic.SHAPES))
    p.add_argument("--formats", nargs="+", default=["nvfp4", "w4a16_awq"], choices=sorted(synthetic.FORMATS))
    p.add_argument("--repeats", type=int, default=9, help="timed loads per setting (interleaved)")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default benches/.cache)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--smoke", action="store_true", help="tiny shape, 2 repeats: tests the harness")
    a = p.parse_args(argv)
    if a.smoke:
        a.shape, a.repeats = "tiny", 2
    if a.repeats < 1:
        p.error("--repeats must be at least 1")

    rows: list[dict] = []
    checkpoints: dict[str, str] = {}
    for fmt in a.formats:
        path = synthetic.ensure_checkpoint(a.shape, fmt, a.cache_dir)
        common.warm_page_cache(synthetic.shard_files(path))
        case = f"{a.shape}-{fmt}-warm"
        nbytes = synthetic.checkpoint_bytes(a.shape, fmt)
        m = measure(path, a.repeats)
        rows += rows_for(case, nbytes, m)
        checkpoints[case] = f"{nbytes / 1e9:.3f} GB of tensors"
        r = {x["metric"]: x["value"] for x in rows if x["case"] == case and x["impl"] == "validate_over_no_validate"}
        print(f"{case} ({nbytes / 1e9:.2f} GB): on {min(m['load']['motensor_validate']):.4f} s, "
              f"off {min(m['load']['motensor_no_validate']):.4f} s (min of {a.repeats}); "
              f"ratio min {r['ratio_min']:.4f}, median {r['ratio_median']:.4f}")

    command = "python " + " ".join(shlex.quote(x) for x in ["benches/validate_scales.py",
                                                            *(argv if argv is not None else sys.argv[1:])])
    from motensor import _core

    out = common.write_results(
        "validate_scales", rows, command, a.out_dir, device="cpu", smoke=a.smoke, checkpoints=checkpoints,
        threads=_core.num_threads(),
        note=(f"whole motensor.load(device='cpu') incl. open, page cache warm; validate_scales on and off "
              f"interleaved (ABBA), one warm-up each, {a.repeats} timed runs each; open alone timed the same way"),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
