"""Helpers shared by the benchmarks: machine description, result files (shared/BENCHMARKS.md),
timing, page-cache control and host-memory sampling."""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime as _dt
import json
import mmap
import os
import platform
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benches" / "results"


# -- machine ------------------------------------------------------------------------------------
def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def gpu_short_name(name: str | None) -> str:
    """``"NVIDIA H100 80GB HBM3"`` -> ``"h100"``; ``None`` (no GPU) -> ``"cpu"``."""
    if not name:
        return "cpu"
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", name.replace("NVIDIA", ""))
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: str | None = None) -> dict:
    """The ``machine`` object of a result file. ``gpu`` names the GPU the figures were measured
    on: ``None`` when ``device`` is the CPU (a ``--smoke`` run), even on a machine with a GPU,
    which is then named under ``unused_gpu``."""
    import torch

    import motensor

    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional here; any import failure means "absent"
        triton_version = None
    present = gpu_name()
    on_cpu = device is not None and str(device).startswith("cpu")
    extra = {"device": str(device), "unused_gpu": present} if on_cpu and present else {}
    return {
        "gpu": None if on_cpu else present,
        **extra,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "cpus": os.cpu_count(),
        "motensor": f"{motensor.__version__}+{_git_sha()}",
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# -- result files -------------------------------------------------------------------------------
def result_path(bench: str, out_dir: Path, gpu: str | None = None, when: _dt.datetime | None = None) -> Path:
    """``<out_dir>/<bench>-<gpu-short-name>-<YYYYMMDD>.json``."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    return Path(out_dir) / f"{bench}-{gpu_short_name(gpu if gpu is not None else gpu_name())}-{when:%Y%m%d}.json"


def write_results(bench: str, rows: list[dict], command: str, out_dir: Path, device: str | None = None,
                  **extra) -> Path:
    """Writes the result JSON (schema of shared/BENCHMARKS.md, ``extra`` keys added at the top
    level) and a PNG of the same rows beside it. ``device``: where the figures were measured
    (``"cpu"`` names the file ``<bench>-cpu-...`` even on a GPU machine). Returns the JSON path."""
    now = _dt.datetime.now(_dt.timezone.utc)
    machine = machine_info(device)
    doc = {
        "bench": bench,
        "when": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "machine": machine,
        "rows": rows,
        **extra,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / f"{bench}-{gpu_short_name(machine['gpu'])}-{now:%Y%m%d}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    from plot import plot_results  # benches/plot.py; imports matplotlib lazily

    plot_results(doc, path.with_suffix(".png"))
    return path


# -- timing -------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> tuple[float, object]:
    """Seconds ``fn`` takes (``sync`` called before the clock stops), and its result."""
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


# -- page cache ---------------------------------------------------------------------------------
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def resident_fraction(files: Iterable[Path]) -> float:
    """Fraction of the files' pages in the page cache (``mincore``)."""
    import numpy as np

    pages = resident = 0
    page = mmap.PAGESIZE
    for f in files:
        size = os.path.getsize(f)
        if size == 0:
            continue
        with open(f, "rb") as fh, mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ) as m:
            view = np.frombuffer(m, dtype=np.uint8)
            n = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n)()
            rc = _libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec)
            del view
            if rc != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            pages += n
            resident += sum(v & 1 for v in vec)
    return resident / pages if pages else 0.0


def evict_page_cache(files: Iterable[Path], system_wide: bool = True) -> str:
    """Drops the files from the page cache; returns how: ``drop_caches`` (the whole machine's
    cache; only with ``system_wide`` and where permitted), else ``posix_fadvise(DONTNEED)`` per
    file, which needs no privilege but spares pages that some process still maps."""
    files = list(files)
    method = "fadvise"
    if system_wide:
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
            method = "drop_caches"
        except OSError:
            pass
    for p in files:  # also after drop_caches: cheap, and covers a refused write
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return method


def warm_page_cache(files: Iterable[Path], block: int = 16 << 20) -> None:
    """Reads the files once so that they sit in the page cache."""
    buf = bytearray(block)
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# -- host memory --------------------------------------------------------------------------------
def _status_kib(*fields: str) -> int:
    total = 0
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in fields:
                total += int(rest.split()[0])
    return total


class RssSampler:
    """Peak growth of this process's anonymous + shared memory (``RssAnon + RssShmem``: what a
    load allocates on the host, page cache excluded) while the ``with`` block runs, sampled every
    ``interval`` seconds on a thread. ``VmRSS`` growth (file pages it maps included) is kept too."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak_bytes = 0
        self.peak_rss_bytes = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            own = _status_kib("RssAnon", "RssShmem") * 1024 - self._base
            rss = _status_kib("VmRSS") * 1024 - self._base_rss
            self.peak_bytes = max(self.peak_bytes, own)
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._base = _status_kib("RssAnon", "RssShmem") * 1024
        self._base_rss = _status_kib("VmRSS") * 1024
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
