#!/usr/bin/env python
"""Load benchmark: a Llama-3.1-8B-shaped ModelOpt checkpoint from the page cache (and from disk)
into GPU memory, motensor against the other loaders and against the machine's limits.

One command on a GPU machine writes ``benches/results/load-<gpu>-<YYYYMMDD>.json`` and the PNG
beside it (schema and impl names: shared/BENCHMARKS.md)::

    python benches/load.py                      # 8b, nvfp4 + w4a16_awq, min of 3, warm + cold
    python benches/load.py --shape 70b --formats nvfp4 --no-cold   # ~43 GB, if the disk allows
    python benches/load.py --dry-run            # tiny checkpoint on the CPU: tests the harness

Per format (cases ``<shape>-<format>-warm|cold``, metric GB/s = checkpoint tensor bytes / s):
``motensor`` (``motensor.load``), ``safetensors`` (``load_file(device="cuda")`` per shard),
``safetensors_cpu_to_cuda``, ``fastsafetensors`` (``fastsafe_open(nogds=True)``) and
``instanttensor`` (``safe_open``) when importable, ``raw_pinned_16t`` (16 Python threads copy
the mmap'd files into a pinned ring, async copies to the GPU: no parsing, no layout, the
"just move the bytes" baseline), ``h2d_pinned_limit`` (a 2 GiB pinned host-to-device copy: no
loader can beat it), and, cold (page cache dropped), ``motensor``, ``safetensors`` and
``disk_read_limit`` (16 threads reading the shards in parallel). ``host_rss_growth_MiB`` is the
host memory (anonymous + shared, page cache excluded) the first motensor load of the process
added at its peak. Warm figures are the minimum over ``--repeats`` runs; each row's ``note``
has every run and the ratios to the pinned H2D limit and to safetensors.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import mmap
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import common  # noqa: E402  (benches/common.py)
import synthetic  # noqa: E402  (benches/synthetic.py)

RAW_THREADS = 16
RAW_CHUNK = 64 << 20
H2D_BYTES = 2 << 30


class Target:
    """The device under test, with the synchronization and clean-up the timings need."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        # Results are dropped by reference counting; on the GPU also hand cached blocks back
        # (and collect cycles) so that one loader's leftovers never crowd the next one.
        if self.cuda:
            gc.collect()
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()


# -- loaders: each returns something holding the loaded tensors -----------------------------------
def run_motensor(path: Path, files: list[Path], t: Target, **kw):
    import motensor

    return motensor.load(path, t.device, progress=False, **kw)


def run_safetensors(path: Path, files: list[Path], t: Target):
    from safetensors.torch import load_file

    out = {}
    for f in files:
        out.update(load_file(f, device=str(t.device)))
    return out


def run_safetensors_cpu_to(path: Path, files: list[Path], t: Target):
    from safetensors.torch import load_file

    out = {}
    for f in files:
        out.update({k: v.to(t.device) for k, v in load_file(f).items()})
    return out


def run_fastsafetensors(path: Path, files: list[Path], t: Target):
    from fastsafetensors import fastsafe_open

    # Tensors are valid only inside the context: the timed work is the load itself.
    with fastsafe_open(filenames=[str(f) for f in files], nogds=True, device=str(t.device)) as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
        t.sync()
        return len(out)


def run_instanttensor(path: Path, files: list[Path], t: Target):
    from instanttensor import safe_open

    index = t.device.index if t.cuda and t.device.index is not None else 0
    out = {}
    # Its tensors point into a reused buffer: clone, as its README says a caller must.
    with safe_open([str(f) for f in files], framework="pt", device=index) as f:
        for name, tensor in f.tensors():
            out[name] = tensor.clone()
    return out


def run_raw(path: Path, files: list[Path], t: Target, threads: int = RAW_THREADS):
    """mmap -> (pinned) ring of 4 x 64 MiB filled by ``threads`` numpy copies -> async copy into
    one device buffer. numpy releases the GIL in large copies, so the threads run in parallel."""
    sizes = [os.path.getsize(f) for f in files]
    arena = torch.empty(sum(sizes), dtype=torch.uint8, device=t.device)
    ring = [torch.empty(RAW_CHUNK, dtype=torch.uint8, pin_memory=t.cuda) for _ in range(4)]
    ring_np = [r.numpy() for r in ring]
    events: list = [None] * len(ring)
    stream = torch.cuda.Stream(t.device) if t.cuda else None

    def copy(job) -> None:
        dst, src = job
        np.copyto(dst, src)

    with ThreadPoolExecutor(threads) as pool:
        i = dst = 0
        for f, size in zip(files, sizes):
            with open(f, "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as m:
                src = np.frombuffer(m, dtype=np.uint8)
                for off in range(0, size, RAW_CHUNK):
                    n, slot = min(RAW_CHUNK, size - off), i % len(ring)
                    if events[slot] is not None:
                        events[slot].synchronize()
                    step = -(-n // threads)
                    jobs = [(ring_np[slot][b : min(b + step, n)], src[off + b : off + min(b + step, n)]) for b in range(0, n, step)]
                    list(pool.map(copy, jobs))
                    if stream is not None:
                        with torch.cuda.stream(stream):
                            arena[dst : dst + n].copy_(ring[slot][:n], non_blocking=True)
                            events[slot] = torch.cuda.Event()
                            events[slot].record(stream)
                    else:
                        arena[dst : dst + n].copy_(ring[slot][:n])
                    dst, i = dst + n, i + 1
                del src, jobs  # the mapping cannot close while numpy views of it exist
    if stream is not None:
        stream.synchronize()
    return arena


def h2d_limit(t: Target, nbytes: int = H2D_BYTES, repeats: int = 3) -> float:
    """Best pinned host-to-device copy rate, GB/s (CUDA events)."""
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    src.fill_(7)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=t.device)
    dst.copy_(src[: 1 << 20])  # context and copy engine warm
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    del src, dst
    t.free()
    return nbytes / best / 1e9


def disk_read_limit(files: list[Path], threads: int = RAW_THREADS, block: int = 8 << 20) -> float:
    """Parallel sequential read rate of the (evicted) files, GB/s: each file cut into
    ``threads`` contiguous ranges, read with ``pread`` (which releases the GIL)."""
    jobs = []
    for f in files:
        size = os.path.getsize(f)
        step = -(-size // threads)
        jobs += [(f, b, min(b + step, size)) for b in range(0, size, step)]

    def read(job) -> int:
        f, b, e = job
        buf = bytearray(block)
        fd = os.open(f, os.O_RDONLY)
        try:
            while b < e:
                n = os.preadv(fd, [memoryview(buf)[: min(block, e - b)]], b)
                if n <= 0:
                    break
                b += n
        finally:
            os.close(fd)
        return 0

    total = sum(e - b for _, b, e in jobs)
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, jobs))
    return total / (time.perf_counter() - start) / 1e9


# -- the benchmark -------------------------------------------------------------------------------
PEERS: dict[str, tuple[Callable, str | None]] = {
    # impl: (runner, module that must be importable)
    "safetensors": (run_safetensors, "safetensors"),
    "safetensors_cpu_to_cuda": (run_safetensors_cpu_to, "safetensors"),
    "fastsafetensors": (run_fastsafetensors, "fastsafetensors"),
    "instanttensor": (run_instanttensor, "instanttensor"),
    "raw_pinned_16t": (run_raw, None),
}


class Bench:
    def __init__(self, target: Target, repeats: int, dry_run: bool = False):
        self.t = target
        self.repeats = repeats
        self.dry_run = dry_run
        self.rows: list[dict] = []
        self.skipped: dict[str, str] = {}
        self.headline: list[str] = []

    def row(self, case: str, impl: str, metric: str, value: float, note: str | None = None) -> dict:
        r = {"case": case, "impl": impl, "metric": metric, "value": round(float(value), 3)}
        if note:
            r["note"] = note
        self.rows.append(r)
        return r

    def time_runs(self, fn: Callable[[], object], repeats: int) -> tuple[list[float], object]:
        times, last = [], None
        for _ in range(repeats):
            last = None
            self.t.free()
            sec, last = common.timed(fn, self.t.sync)
            times.append(sec)
        return times, last


#: --quick: the issue's headline peers only (the rest are listed under "skipped").
QUICK_PEERS = ("safetensors", "raw_pinned_16t")


def bench_format(b: Bench, shape: str, fmt: str, cache: Path | None, cold: bool, h2d: float | None, sweep: bool,
                 quick: bool = False) -> None:
    path = synthetic.ensure_checkpoint(shape, fmt, cache)
    files = synthetic.shard_files(path)
    nbytes = synthetic.checkpoint_bytes(shape, fmt)
    file_bytes = sum(os.path.getsize(f) for f in files)
    warm, t = f"{shape}-{fmt}-warm", b.t
    common.warm_page_cache(files)

    # The process's first load: pinned staging is allocated here (later loads reuse torch's
    # cached blocks), so this is also where host memory grows.
    t.free()
    with common.RssSampler() as rss:
        first, lc = common.timed(lambda: run_motensor(path, files, t), t.sync)
    stats = lc.stats
    del lc
    times, lc = b.time_runs(lambda: run_motensor(path, files, t), b.repeats)
    stats = lc.stats
    del lc
    best = {"motensor": min(times)}
    mo = b.row(warm, "motensor", "GB/s", nbytes / best["motensor"] / 1e9,
               f"runs {fmt_times(times)} s; first call of the process {first:.3f} s; {stats}")
    b.row(warm, "motensor", "host_rss_growth_MiB", rss.peak_bytes / 2**20,
          f"peak RssAnon+RssShmem growth during the first load (VmRSS, mapped page cache included: "
          f"{rss.peak_rss_bytes / 2**20:.0f} MiB); staging ring {stats.staging_bytes / 2**20:.0f} MiB")

    if sweep:
        for chunk_mib in (16, 32, 64, 128):
            for nbuf in (2, 4):
                ts, last = b.time_runs(partial(run_motensor, path, files, t, chunk_bytes=chunk_mib << 20, num_buffers=nbuf), b.repeats)
                del last
                b.row(warm, f"motensor_chunk{chunk_mib}M_x{nbuf}", "GB/s", nbytes / min(ts) / 1e9, f"runs {fmt_times(ts)} s")

    for impl, (runner, module) in PEERS.items():
        why = "not in --quick" if quick and impl not in QUICK_PEERS else skip_reason(impl, module, t)
        if why:
            b.skipped[impl] = why
            print(f"  skip {impl}: {why}")
            continue
        try:
            ts, last = b.time_runs(partial(runner, path, files, t), b.repeats)
            del last  # before the next loader runs
        except Exception as e:  # noqa: BLE001 - a peer failing must not lose the other rows
            b.skipped[impl] = f"failed: {type(e).__name__}: {e}"
            print(f"  {impl} failed: {e}")
            continue
        best[impl] = min(ts)
        size = file_bytes if impl == "raw_pinned_16t" else nbytes
        what = "file bytes (headers too)" if impl == "raw_pinned_16t" else "runs"
        b.row(warm, impl, "GB/s", size / best[impl] / 1e9, f"{what}: {fmt_times(ts)} s")
    if h2d is not None:
        b.row(warm, "h2d_pinned_limit", "GB/s", h2d, f"{H2D_BYTES >> 30} GiB pinned host->device copy, best of 3")
    mo["note"] = ratios(nbytes / best["motensor"] / 1e9, h2d, nbytes / best["safetensors"] / 1e9 if "safetensors" in best else None) + "; " + mo["note"]
    b.headline.append(f"{warm}: motensor {mo['value']:.1f} GB/s; " + mo["note"].split("; runs")[0])
    b.t.free()

    if cold:
        bench_cold(b, shape, fmt, path, files, nbytes)


def bench_cold(b: Bench, shape: str, fmt: str, path: Path, files: list[Path], nbytes: int) -> None:
    case, t = f"{shape}-{fmt}-cold", b.t
    rates = {}
    for impl, runner in (("motensor", run_motensor), ("safetensors", run_safetensors), ("disk_read_limit", None)):
        t.free()
        # A dry run (a shared CPU box, tests) evicts only its own files.
        method = common.evict_page_cache(files, system_wide=not b.dry_run)
        left = common.resident_fraction(files)
        if left > 0.05:
            b.skipped[f"{impl} (cold)"] = f"page cache could not be dropped ({method}: {left:.0%} still resident)"
            print(f"  cold {impl}: unavailable, {left:.0%} of the files still cached after {method}")
            continue
        if runner is None:
            rates[impl] = disk_read_limit(files)
            note = f"{RAW_THREADS} threads, pread, file bytes; cache dropped by {method}"
        else:
            sec, out = common.timed(partial(runner, path, files, t), t.sync)
            del out
            rates[impl] = nbytes / sec / 1e9
            note = f"one run, {sec:.3f} s; cache dropped by {method} ({left:.1%} resident before)"
        b.row(case, impl, "GB/s", rates[impl], note)
    if "motensor" in rates:
        for r in b.rows:
            if r["case"] == case and r["impl"] == "motensor":
                extra = []
                if "disk_read_limit" in rates:
                    extra.append(f"{rates['motensor'] / rates['disk_read_limit']:.2f}x disk read limit")
                if "safetensors" in rates:
                    extra.append(f"{rates['motensor'] / rates['safetensors']:.1f}x safetensors")
                r["note"] = "; ".join(extra + [r["note"]])
    common.warm_page_cache(files)


def skip_reason(impl: str, module: str | None, t: Target) -> str | None:
    if module is not None and importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    if impl in ("safetensors_cpu_to_cuda", "fastsafetensors", "instanttensor") and not t.cuda:
        return "needs CUDA"
    return None


def ratios(gbps: float, h2d: float | None, st: float | None) -> str:
    parts = []
    if h2d:
        parts.append(f"{gbps / h2d:.2f}x pinned H2D")
    if st:
        parts.append(f"{gbps / st:.1f}x safetensors")
    return "; ".join(parts) or "no limit measured"


def fmt_times(ts: list[float]) -> str:
    return "/".join(f"{x:.3f}" for x in ts)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'case':22s} {'impl':26s} {'value':>9s}  metric")
    for r in rows:
        print(f"{r['case']:22s} {r['impl']:26s} {r['value']:9.2f}  {r['metric']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="motensor.load benchmark (see the module docstring)")
    p.add_argument("--shape", choices=sorted(synthetic.SHAPES), default=None, help="default 8b (tiny with --dry-run)")
    p.add_argument("--formats", nargs="+", choices=sorted(synthetic.FORMATS), default=sorted(synthetic.FORMATS))
    p.add_argument("--repeats", type=int, default=None, help="runs per warm measurement, the minimum is kept (default 3)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold (page cache dropped) runs")
    p.add_argument("--sweep", action="store_true", help="also time motensor over staging sizes (16-128 MiB x 2/4 buffers)")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default benches/.cache)")
    p.add_argument("--out-dir", type=Path, default=None, help="result directory (default benches/results)")
    p.add_argument("--dry-run", action="store_true", help="tiny checkpoint on the CPU, results to a temporary directory")
    p.add_argument("--quick", action="store_true",
                   help="the headline only (make gpu-check): nvfp4, warm, motensor vs safetensors vs the pinned "
                        "H2D limit (and raw_pinned_16t), min of 3")
    a = p.parse_args(argv)
    if a.quick:
        a.formats = ["nvfp4"] if a.formats == sorted(synthetic.FORMATS) else a.formats
        a.no_cold = True

    if a.dry_run:
        shape, repeats = a.shape or "tiny", a.repeats or 2
        out = a.out_dir or Path(tempfile.mkdtemp(prefix="motensor-load-dry-run-"))
        device = torch.device("cpu")
        cache = a.cache_dir or out / ".cache"
    else:
        if not torch.cuda.is_available():
            p.error("no CUDA GPU: run on a GPU machine, or pass --dry-run to test the harness on the CPU")
        shape, repeats = a.shape or "8b", a.repeats or 3
        out, device, cache = a.out_dir or common.RESULTS_DIR, torch.device("cuda", torch.cuda.current_device()), a.cache_dir
        torch.ones(1, device=device)  # CUDA context before any timing

    b = Bench(Target(device), repeats, a.dry_run)
    h2d = h2d_limit(b.t) if b.t.cuda else None
    if h2d is None:
        b.skipped["h2d_pinned_limit"] = "needs CUDA"
    import motensor

    print(f"load benchmark: {shape} {a.formats} on {device}, min of {repeats}, {motensor._core.num_threads()} fill threads")
    for fmt in a.formats:
        print(f"- {shape}-{fmt}: {synthetic.checkpoint_bytes(shape, fmt) / 1e9:.2f} GB")
        bench_format(b, shape, fmt, Path(cache) if cache else None, not a.no_cold, h2d, a.sweep, a.quick)

    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, common.ROOT), *(argv if argv is not None else sys.argv[1:])])
    path = common.write_results(
        "load", b.rows, command, out,
        note=f"warm rows: min of {repeats} runs; GB/s = checkpoint tensor bytes / wall seconds (raw_pinned_16t: file bytes)",
        skipped=b.skipped, dry_run=a.dry_run, quick=a.quick, headline=b.headline, device=str(device),
    )
    print_table(b.rows)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
