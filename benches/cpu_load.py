#!/usr/bin/env python
"""CPU load benchmark (issue 15): a 1B-shaped synthetic ModelOpt checkpoint loaded into host
memory, ``motensor.load(device="cpu")`` against safetensors, rate and peak memory.

    python benches/cpu_load.py                    # 1b nvfp4, 3 fresh processes per loader
    python benches/cpu_load.py --smoke            # tiny checkpoint, 1 process each (tests)

Every measurement runs in a fresh Python process (imports done first, page cache warmed by the
parent), so that one loader's pages and allocator caches never count for the next. Per loader
(case ``<shape>-<format>-warm``):

- ``GB/s``: checkpoint tensor bytes / wall seconds of the load call (best over processes);
- ``GB/s_touched``: the same over the load call plus one read of every 4 KiB page of every
  tensor it returned: safetensors' tensors are lazy views of a memory map, which only this
  first touch (a model's first forward) pages in;
- ``peak_rss_MiB``: the process's ``VmHWM`` (peak resident set: anonymous + mapped file pages)
  after load and touch, minus its ``VmRSS`` just before the load: what loading added at its peak;
- ``peak_anon_MiB``: the peak growth of ``RssAnon + RssShmem`` (sampled every ms): the memory the
  load allocated itself, mapped file pages (page cache, reclaimable) excluded.

Loaders: ``motensor`` (``motensor.load(path, "cpu")``: open + plan + pread into one arena, kernel
layout), ``safetensors_load_file`` (``safetensors.torch.load_file`` per shard) and
``safetensors_safe_open`` (``safe_open(f, "pt")`` + ``get_tensor`` of every name). Each row's
note has the ratio to the checkpoint's size (the issue's goal: peak about the checkpoint size)
and, for motensor, to safetensors. Writes ``benches/results/cpu_load-cpu-<date>.json`` + PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (benches/common.py)
import synthetic  # noqa: E402  (benches/synthetic.py)

IMPLS = ("motensor", "safetensors_load_file", "safetensors_safe_open")
MIB = 1 << 20


# -- the child process: one load, measured ----------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _load(impl: str, path: Path):
    files = synthetic.shard_files(path)
    if impl == "motensor":
        import motensor

        return motensor.load(path, "cpu", progress=False)
    if impl == "safetensors_load_file":
        from safetensors.torch import load_file

        out: dict = {}
        for f in files:
            out.update(load_file(f))
        return out
    if impl == "safetensors_safe_open":
        from safetensors import safe_open

        out = {}
        for f in files:
            with safe_open(f, "pt") as g:
                for k in g.keys():
                    out[k] = g.get_tensor(k)
        return out
    raise ValueError(f"unknown loader {impl!r}")


def child(impl: str, path: Path) -> dict:
    """Runs one load in this (fresh) process and returns its figures."""
    import safetensors.torch  # noqa: F401  (imports are not part of the load)
    import torch  # noqa: F401

    import motensor  # noqa: F401
    import motensor.loading  # noqa: F401

    before = _status_kib("VmRSS") * 1024
    with common.RssSampler(0.001) as s:
        t0 = time.perf_counter()
        out = _load(impl, path)
        seconds = time.perf_counter() - t0
        if impl == "motensor":
            tensors = list(out.tensors.values()) + [t for m in out.modules.values() for t in m.tensors.values()]
        else:
            tensors = list(out.values())
        touched = sum(_touch(t) for t in tensors)
        touch_seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM") * 1024
    held = _status_kib("VmRSS") * 1024 - before
    return {"seconds": seconds, "touch_seconds": touch_seconds, "peak_rss_growth": peak - before,
            "peak_anon_growth": s.peak_bytes, "rss_after_growth": held, "tensors": len(tensors), "touched": touched}


def _touch(t) -> int:
    """Reads one byte of every 4 KiB page of ``t``: a lazily mapped tensor is paged in, as a
    model's first forward would do."""
    import torch

    return int(t.reshape(-1).view(torch.uint8)[::4096].sum())


def run_child(impl: str, path: Path, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, str(path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(common.ROOT / "python"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the parent: checkpoint, processes, result file ------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(synthetic.SHAPES), default="1b")
    p.add_argument("--format", choices=sorted(synthetic.FORMATS), default="nvfp4")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per loader")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--smoke", action="store_true", help="tiny checkpoint, one process per loader")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default benches/.cache)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--timeout", type=int, default=600, help="seconds per process")
    p.add_argument("--child", nargs=2, metavar=("IMPL", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]))))
        return 0
    shape = "tiny" if a.smoke else a.shape
    repeats = 1 if a.smoke else a.repeats
    impls = [i for i in a.impls.split(",") if i]
    if unknown := set(impls) - set(IMPLS):
        p.error(f"unknown loaders {sorted(unknown)}; known: {', '.join(IMPLS)}")

    path = synthetic.ensure_checkpoint(shape, a.format, a.cache_dir)
    files = synthetic.shard_files(path)
    data_bytes = synthetic.checkpoint_bytes(shape, a.format)
    file_bytes = sum(f.stat().st_size for f in files)
    print(f"cpu_load: {shape}-{a.format}, {data_bytes / 1e9:.3f} GB of tensors in {len(files)} shards")
    case = f"{shape}-{a.format}-warm"
    runs: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for impl in impls:  # interleaved, so that drift on a shared box spreads over every loader
            common.warm_page_cache(files)
            runs.setdefault(impl, []).append(run_child(impl, path, a.timeout))
    best: dict[str, dict] = {}
    for impl, rs in runs.items():
        best[impl] = {
            "GB/s": data_bytes / min(x["seconds"] for x in rs) / 1e9,
            "GB/s_touched": data_bytes / min(x["touch_seconds"] for x in rs) / 1e9,
            "peak_rss_MiB": max(x["peak_rss_growth"] for x in rs) / MIB,
            "peak_anon_MiB": max(x["peak_anon_growth"] for x in rs) / MIB,
        }
    rows: list[dict] = []
    ref = best.get("safetensors_load_file")
    for impl, figs in best.items():
        for metric, v in figs.items():
            note = ""
            if not metric.startswith("GB/s"):
                note = f"{v * MIB / data_bytes:.2f}x the checkpoint"
            if ref is not None and impl != "safetensors_load_file" and ref[metric] > 0:
                note += ("; " if note else "") + f"{v / ref[metric]:.2f}x safetensors_load_file"
            note += "; runs " + ", ".join(
                f"{data_bytes / x[_RAW[metric]] / 1e9 if metric.startswith('GB/s') else x[_RAW[metric]] / MIB:.3g}" for x in runs[impl])
            rows.append({"case": case, "impl": impl, "metric": metric, "value": round(v, 3), "note": note})
        print(f"  {impl:24s} {figs['GB/s']:6.2f} GB/s ({figs['GB/s_touched']:5.2f} touched)  peak RSS +{figs['peak_rss_MiB']:7.1f} MiB  "
              f"({figs['peak_rss_MiB'] * MIB / data_bytes:.2f}x ckpt)  peak anon +{figs['peak_anon_MiB']:7.1f} MiB")
    rows.append({"case": case, "impl": "checkpoint_size", "metric": "peak_rss_MiB", "value": round(data_bytes / MIB, 3),
                 "note": "tensor bytes of the checkpoint (the goal's scale)"})
    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, common.ROOT),
                                                            *(argv if argv is not None else sys.argv[1:])])
    out = common.write_results(
        "cpu_load", rows, command, a.out_dir, device="cpu", smoke=a.smoke,
        checkpoint={"shape": shape, "format": a.format, "tensor_bytes": data_bytes, "file_bytes": file_bytes,
                    "shards": len(files)},
        note=(f"each figure from a fresh process (imports first), page cache warm; GB/s = tensor bytes / load "
              f"seconds, best of {repeats}; peak_rss = VmHWM after the load - VmRSS before it (max over "
              f"processes); peak_anon = peak growth of RssAnon+RssShmem (file pages excluded); "
              f"{os.cpu_count()} CPUs, shared box"),
    )
    print(f"wrote {out}")
    return 0


_RAW = {"GB/s": "seconds", "GB/s_touched": "touch_seconds", "peak_rss_MiB": "peak_rss_growth", "peak_anon_MiB": "peak_anon_growth"}

if __name__ == "__main__":
    sys.exit(main())
