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
``ratio_median``, ``cpu_ratio_min`` (time with / time without; 1.0 = free); the same with a
``fill_`` prefix for the Rust fill alone into a pre-touched arena (where the block-scale checks
run; no allocation or page faults timed, so less noise).

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


def _seconds(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds (``process_time``: every thread of the process) of one call."""
    gc.collect()
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    del out
    return seconds, cpu


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Runs each function ``repeats`` times, alternating the order every round (ABBA...), after
    one untimed warm-up each. Returns ``(wall, cpu)`` seconds per run."""
    for fn in fns.values():
        _seconds(fn)
    names = list(fns)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(_seconds(fns[name]))
    return times


def _filler(path: Path, validate: bool) -> Callable[[], object]:
    """The Rust fill alone (where the block-scale checks run) into a CPU arena allocated and
    touched beforehand, so that neither page faults nor the allocator are timed."""
    import torch

    from motensor.checkpoint import Checkpoint
    from motensor.loading.pipeline import fill_direct

    ck = Checkpoint(path, validate_scales=validate)
    plan = ck._core.plan(None, None)
    arena = torch.zeros(plan.total_bytes, dtype=torch.uint8)
    return lambda: fill_direct(plan, arena)


def measure(path: Path, repeats: int) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """``(wall, cpu)`` seconds per setting of: whole loads, fills alone, opens alone."""
    import motensor

    loads = {k: (lambda v=v: motensor.load(path, "cpu", progress=False, validate_scales=v)) for k, v in SETTINGS.items()}
    opens = {k: (lambda v=v: motensor.open(path, validate_scales=v)) for k, v in SETTINGS.items()}
    out = {"load": _interleaved(loads, repeats), "open": _interleaved(opens, max(repeats, 5))}
    fills = {k: _filler(path, v) for k, v in SETTINGS.items()}
    out["fill"] = _interleaved(fills, repeats)
    return out


def _sig(x: float) -> float:
    """Six significant digits: tiny (smoke) and large timings alike."""
    return float(f"{x:.6g}")


def rows_for(case: str, nbytes: int, m: dict[str, dict[str, list[tuple[float, float]]]]) -> list[dict]:
    rows: list[dict] = []
    for impl in SETTINGS:
        for what, prefix in (("load", ""), ("fill", "fill_")):
            wall = [w for w, _ in m[what][impl]]
            cpu = [c for _, c in m[what][impl]]
            note = "runs (s): " + ", ".join(f"{x:.6g}" for x in wall)
            rows += [
                {"case": case, "impl": impl, "metric": f"{prefix}s_min", "value": _sig(min(wall)), "note": note},
                {"case": case, "impl": impl, "metric": f"{prefix}s_median", "value": _sig(statistics.median(wall))},
                {"case": case, "impl": impl, "metric": f"{prefix}cpu_s_min", "value": _sig(min(cpu))},
            ]
        rows += [
            {"case": case, "impl": impl, "metric": "GB/s",
             "value": round(nbytes / 1e9 / min(w for w, _ in m["load"][impl]), 4)},
            {"case": case, "impl": impl, "metric": "open_ms_min", "value": round(1e3 * min(w for w, _ in m["open"][impl]), 3)},
        ]
    for what, prefix in (("load", ""), ("fill", "fill_")):
        on = [w for w, _ in m[what]["motensor_validate"]]
        off = [w for w, _ in m[what]["motensor_no_validate"]]
        con = [c for _, c in m[what]["motensor_validate"]]
        coff = [c for _, c in m[what]["motensor_no_validate"]]
        rows += [
            {"case": case, "impl": "validate_over_no_validate", "metric": f"{prefix}ratio_min",
             "value": round(min(on) / min(off), 4)},
            {"case": case, "impl": "validate_over_no_validate", "metric": f"{prefix}ratio_median",
             "value": round(statistics.median(on) / statistics.median(off), 4)},
            {"case": case, "impl": "validate_over_no_validate", "metric": f"{prefix}cpu_ratio_min",
             "value": round(min(con) / min(coff), 4)},
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
        print(f"{case} ({nbytes / 1e9:.2f} GB), on/off (min of {a.repeats}): load {r['ratio_min']:.4f} "
              f"(median {r['ratio_median']:.4f}, cpu {r['cpu_ratio_min']:.4f}); fill alone {r['fill_ratio_min']:.4f} "
              f"(median {r['fill_ratio_median']:.4f}, cpu {r['fill_cpu_ratio_min']:.4f})")

    command = "python " + " ".join(shlex.quote(x) for x in ["benches/validate_scales.py",
                                                            *(argv if argv is not None else sys.argv[1:])])
    from motensor import _core

    out = common.write_results(
        "validate_scales", rows, command, a.out_dir, device="cpu", smoke=a.smoke, checkpoints=checkpoints,
        threads=_core.num_threads(),
        note=(f"page cache warm; validate_scales on and off interleaved (ABBA), one warm-up each, {a.repeats} "
              f"timed runs each of: the whole motensor.load(device='cpu') incl. open (s_*, GB/s), the Rust fill "
              f"alone into a pre-touched arena (fill_*), open alone (open_ms_min); cpu = process_time of all "
              f"threads; ratios = validate / no_validate"),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
