#!/usr/bin/env python3
"""`make gpu-check`: every GPU test result and benchmark figure in one command, within a budget.

Written for a lent GPU machine (H100/H200, Python 3.12, torch + CUDA, triton, transformers,
cupy, matplotlib, pytest, no network): run from the repository root with that machine's
`python3`, the abi3 extension built elsewhere and carried (`python/motensor/_core.abi3.so`), and
`PYTHONPATH=python` (set here). Nothing is installed.

    python3 scripts/gpu_check.py [--out DIR] [--budget SECONDS] [--steps pytest,load,gemm,moe,e2e,lora]
    python3 scripts/gpu_check.py --smoke --out DIR     # the same steps on the CPU, tiny sizes

Steps (each in its own process, each with a hard time cap; the whole run fits `--budget`, 450 s
by default, Triton compilation included):
  preflight  the GPU, versions, the extension; starts two background jobs: writing the 8B-shaped
             synthetic checkpoints (once per machine, at disk speed) and the covering
             ahead-of-time compile sweep of the Triton kernels (sm80/sm89/sm90, on this triton)
  pytest     `pytest -m "(gpu or gpu_check) and not slow"`: the gpu-marked tests plus every test whose behaviour
             changes when a GPU is present (tests/kernels, the bench harnesses), junit XML
  load       benches/load.py --quick     motensor vs safetensors vs the pinned H2D limit
  gemm       benches/gemm.py --quick     8B shapes, M = 1, 16, 4096, vs cuBLAS / _scaled_mm / tinygemm / roofline
  moe        benches/moe.py --quick      one MoE experts layer (Qwen3-30B-A3B, DeepSeek-V3 with 64 experts),
                                         1 and 64 tokens, NVFP4 / W4A16_AWQ: grouped kernel vs loop vs bf16
  e2e        benches/e2e.py --quick      batch-1 decode, NVFP4 and W4A16_AWQ with CUDA graphs vs bf16
  lora       benches/lora.py --quick     LoRA training steps, 8B shape NVFP4 vs bf16: tokens/s, peak memory
                                         (needs peft; skipped without it)

Output: at most 8 files in one folder ($OUT when set, else ./gpu-check-out): gpu-check.log,
pytest-gpu.xml, load/gemm/moe/e2e/lora-<gpu>-<date>.json, and their PNG plots while there is room
(the others are redrawn from the JSON with benches/plot.py). A step that overruns
is stopped (SIGTERM, then SIGKILL); the benchmarks write what they measured before their cap.
Without a CUDA GPU (and without --smoke) it stops at once with exit code 2.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "python" / "motensor" / "_core.abi3.so"
MAX_FILES = 8
MAX_FILE_BYTES = 16 << 20          # what the device tool brings back per file
LOG_NAME = "gpu-check.log"
JUNIT_NAME = "pytest-gpu.xml"
BENCHES = ("load", "gemm", "moe", "e2e", "lora")
NO_GPU_EXIT = 2


@dataclass
class Step:
    name: str
    cap: float            # hard wall-clock cap, seconds
    floor: float          # time kept for it when earlier steps run long
    argv: list = field(default_factory=list)
    soft_flag: Optional[str] = None   # the step's own "stop and write results" option (seconds)
    requires: Optional[str] = None    # a module the step needs; skipped (and said) without it


def gpu_visible() -> tuple[bool, str]:
    """A CUDA GPU without importing torch (fast): a device node or `nvidia-smi -L`."""
    if os.environ.get("MOTENSOR_GPU_CHECK_FAKE_NO_GPU"):
        return False, "MOTENSOR_GPU_CHECK_FAKE_NO_GPU is set"
    nodes = glob.glob("/dev/nvidia[0-9]*")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and "GPU" in out.stdout:
                return True, out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    if nodes:
        return True, f"device nodes {', '.join(nodes)}"
    return False, "no /dev/nvidia* device and no working nvidia-smi"


class Log:
    """Tee to stdout and the log file (flushed per line: the file is what comes back if killed)."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
        self.lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, *parts: object) -> None:
        line = f"[gpu-check {time.monotonic() - self.t0:6.1f}s] " + " ".join(str(p) for p in parts)
        self.raw(line + "\n")

    def raw(self, text: str) -> None:
        with self.lock:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.f.write(text)

    def close(self) -> None:
        self.f.close()


def child_env(smoke: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "python"), str(ROOT / "tests")] +
                                        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")                 # no network there
    if smoke:
        env.setdefault("TRITON_INTERPRET", "1")
    return env


_LIVE: set = set()   # process groups still running, stopped at exit


def run_step(log: Log, name: str, argv: list, cap: float, env: dict, cwd: Path = ROOT) -> dict:
    """Runs one step in its own process group with a hard cap; output goes into the log."""
    log(f"== {name}: {' '.join(argv)}  (cap {cap:.0f} s)")
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, errors="replace", bufsize=1)
    _LIVE.add(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.raw(f"  {name}| {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = "ok"
    try:
        rc = proc.wait(timeout=max(cap, 1.0))
    except subprocess.TimeoutExpired:
        status = "timeout"
        log(f"{name}: hit its {cap:.0f} s cap; SIGTERM")
        _signal_group(proc, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            rc = proc.wait()
    reader.join(timeout=5)
    _LIVE.discard(proc)
    if status == "ok" and rc != 0:
        status = f"failed (exit {rc})"
    took = time.monotonic() - start
    log(f"== {name}: {status} after {took:.1f} s")
    return {"step": name, "status": status, "rc": rc, "seconds": round(took, 1)}


def stop_all(log: Log) -> None:
    """Background jobs still running at the end: a new session would outlive this command."""
    for proc in list(_LIVE):
        log(f"stopping process group {proc.pid} ({' '.join(map(str, proc.args[:4]))} ...)")
        _signal_group(proc, signal.SIGTERM)
    time.sleep(1.0 if _LIVE else 0.0)
    for proc in list(_LIVE):
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Background:
    """A helper job that runs while the GPU steps do (CPU / disk work), with its own cap."""

    def __init__(self, log: Log, name: str, argv: list, cap: float, env: dict):
        self.name, self.cap = name, cap
        self.result: Optional[dict] = None
        self.thread = threading.Thread(target=self._run, args=(log, argv, env), daemon=True)
        self.thread.start()

    def _run(self, log: Log, argv: list, env: dict) -> None:
        self.result = run_step(log, self.name, argv, self.cap, env)

    def wait(self, log: Log, timeout: float) -> Optional[dict]:
        if self.thread.is_alive():
            log(f"waiting up to {timeout:.0f} s for background {self.name}")
        self.thread.join(timeout=max(timeout, 0))
        return self.result


def plan(smoke: bool, py: str, out: Path, cache: Path) -> list[Step]:
    """The steps, with hard caps and the time kept for each (sum of caps > budget on purpose:
    a step that finishes early leaves its time to the later ones)."""
    junit = str(out / JUNIT_NAME)
    pytest_argv = [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", f"--junitxml={junit}",
                   "-o", "junit_family=xunit2"]
    if smoke:
        # On the CPU the gpu tests skip; one small file keeps the dry run short.
        pytest_argv += ["-m", "gpu", "tests/kernels/test_act_quant.py"]
    else:
        pytest_argv += ["-m", "(gpu or gpu_check) and not slow", "tests"]  # the AOT sweep runs beside
        if _has_module(py, "pytest_timeout"):
            pytest_argv += ["--timeout=240"]
        if _has_module(py, "xdist"):
            pytest_argv += ["-n", "6"]
    size = ["--smoke"] if smoke else []
    lora = [py, "benches/lora.py", "--out", str(out)] + (["--smoke"] if smoke else ["--quick", "--cache-dir", str(cache)])
    return [
        Step("pytest", cap=170, floor=60, argv=pytest_argv),
        Step("load", cap=90, floor=40, argv=[py, "benches/load.py", "--quick", "--out-dir", str(out),
                                              "--cache-dir", str(cache)] + (["--dry-run"] if smoke else [])),
        Step("gemm", cap=135, floor=60, argv=[py, "benches/gemm.py", "--quick", "--out-dir", str(out)] + size,
             soft_flag="--max-seconds"),
        # --quick: <= 60 s with Triton compilation (H100); its soft stop starts no new format after cap - 25 s.
        Step("moe", cap=75, floor=40, argv=[py, "benches/moe.py", "--out", str(out)]
             + (["--smoke"] if smoke else ["--quick"]), soft_flag="--max-seconds"),
        Step("e2e", cap=160, floor=60, argv=[py, "benches/e2e.py", "--quick", "--out", str(out),
                                             "--cache-dir", str(cache)] + size + (["--no-compiled"] if smoke else []),
             soft_flag="--max-seconds"),
        # Needs peft (carried as a wheel: benches/README.md); skipped with a note without it.
        Step("lora", cap=120, floor=45, argv=lora, requires="peft"),
    ]


def _has_module(py: str, name: str) -> bool:
    r = subprocess.run([py, "-c", f"import {name}"], capture_output=True)
    return r.returncode == 0


PREFLIGHT = r"""
import json, os, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=list(torch.cuda.get_device_capability(0)), sms=p.multi_processor_count,
                memory_GiB=round(p.total_memory / 2**30, 1))
for mod in ("triton", "transformers", "safetensors", "numpy", "cupy", "matplotlib", "pytest", "xdist"):
    try:
        info[mod] = __import__(mod).__version__
    except Exception as e:
        info[mod] = f"missing ({type(e).__name__})"
import motensor, motensor._core as core
info["motensor"] = motensor.__version__
info["fill_threads"] = core.num_threads()
print(json.dumps(info, indent=1))
if not info["cuda_available"] and not os.environ.get("MOTENSOR_GPU_CHECK_SMOKE"):
    sys.exit("torch sees no CUDA GPU")
"""


def collect(out: Path, log: Log) -> list[str]:
    """Keeps the folder within the device tool's limits: a partial benchmark file becomes the
    result (and gets its plot), anything else is listed and removed; returns the kept names."""
    for bench in BENCHES:
        partial = out / f"{bench}-partial.json"
        finals = [p for p in out.glob(f"{bench}-*.json") if p != partial]
        if partial.exists():
            if finals:
                partial.unlink()
            else:
                try:
                    doc = json.loads(partial.read_text())
                    final = out / f"{bench}-{_gpu_short(doc)}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d}.json"
                    doc.setdefault("status", "partial: the step was stopped at its cap")
                    final.write_text(json.dumps(doc, indent=2) + "\n")
                    partial.unlink()
                    _plot(final, log)
                    log(f"{bench}: kept the partial results as {final.name}")
                except Exception as e:  # noqa: BLE001 - never lose the run over a plot
                    log(f"{bench}: partial results unreadable: {e}")
    # Every JSON comes back; plots while there is room (they are redrawn from the JSON with
    # benches/plot.py where one is missing).
    allowed = {LOG_NAME, JUNIT_NAME}
    results = [p for bench in BENCHES for p in sorted(out.glob(f"{bench}-*.json"))]
    allowed |= {p.name for p in results}
    for p in results:
        png = p.with_suffix(".png")
        if png.exists() and len(allowed) < MAX_FILES:
            allowed.add(png.name)
    for p in sorted(out.iterdir()):
        if p.name not in allowed:
            log(f"removing {p.name} from the output folder (not one of the {MAX_FILES} result files)")
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
    return sorted(p.name for p in out.iterdir())


def _gpu_short(doc: dict) -> str:
    sys.path.insert(0, str(ROOT / "benches"))
    import common  # benches/common.py (stdlib only at import)

    return common.gpu_short_name((doc.get("machine") or {}).get("gpu"))


def _plot(json_path: Path, log: Log) -> None:
    try:
        sys.path.insert(0, str(ROOT / "benches"))
        from plot import plot_results  # benches/plot.py

        plot_results(json.loads(json_path.read_text()), json_path.with_suffix(".png"))
    except Exception as e:  # noqa: BLE001 - matplotlib may be missing
        log(f"no plot for {json_path.name}: {type(e).__name__}: {e}")


def summary(out: Path, results: list[dict], log: Log) -> None:
    """The headline table (last thing printed: the device tool returns the output's tail)."""
    log("== summary")
    for r in results:
        log(f"  {r['step']:<10} {r['status']:<18} {r['seconds']:7.1f} s")
    junit = out / JUNIT_NAME
    if junit.exists():
        import xml.etree.ElementTree as ET

        try:
            root = ET.parse(junit).getroot()
            suite = root if root.tag == "testsuite" else root.find("testsuite")
            if suite is not None:
                a = suite.attrib
                log(f"  pytest: {a.get('tests')} tests, {a.get('failures')} failures, {a.get('errors')} errors, "
                    f"{a.get('skipped')} skipped")
        except ET.ParseError as e:
            log(f"  pytest: junit XML unreadable ({e})")
    for bench in BENCHES:
        for p in sorted(out.glob(f"{bench}-*.json")):
            try:
                doc = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
            for line in doc.get("headline") or []:
                log(f"  {bench}: {line}")
            if not doc.get("headline"):
                log(f"  {bench}: {len(doc.get('rows', []))} rows in {p.name}")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, default=None, help="result folder (default $OUT, else ./gpu-check-out)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450)")
    p.add_argument("--steps", default="pytest,load,gemm,moe,e2e,lora", help="comma-separated subset, in order")
    p.add_argument("--smoke", action="store_true", help="run every step on the CPU at tiny sizes (tests the plumbing)")
    p.add_argument("--no-background", action="store_true", help="no checkpoint writer / AOT sweep in the background")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="synthetic checkpoints (default benches/.cache, kept between runs on one machine)")
    a = p.parse_args(argv)
    started = time.monotonic()
    deadline = started + a.budget

    if not a.smoke:
        ok, why = gpu_visible()
        if not ok:
            print(f"gpu-check needs a CUDA GPU: {why}. Run it on a GPU machine (benches/README.md, "
                  f"'make gpu-check'), or `python3 scripts/gpu_check.py --smoke` for a CPU dry run.",
                  file=sys.stderr)
            return NO_GPU_EXIT
    if not EXTENSION.exists():
        print(f"gpu-check needs the compiled extension {EXTENSION.relative_to(ROOT)}: build it with "
              f"./scripts/setup.sh and carry it to the GPU machine (benches/README.md).", file=sys.stderr)
        return 3

    out = a.out or Path(os.environ.get("OUT") or ROOT / "gpu-check-out")
    out.mkdir(parents=True, exist_ok=True)
    stale = [x for x in out.iterdir()]
    for x in stale:  # a folder of this run's results only
        shutil.rmtree(x) if x.is_dir() else x.unlink()
    log = Log(out / LOG_NAME)
    py = sys.executable
    env = child_env(a.smoke)
    if a.smoke:
        env["MOTENSOR_GPU_CHECK_SMOKE"] = "1"
    cache = a.cache_dir or (out.parent / f".{out.name}-cache" if a.smoke else ROOT / "benches" / ".cache")
    steps = {s.name: s for s in plan(a.smoke, py, out, cache)}
    wanted = [s.strip() for s in a.steps.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in steps]
    if unknown:
        p.error(f"unknown steps {unknown}; known: {', '.join(steps)}")
    log(f"motensor gpu-check{' (smoke, CPU)' if a.smoke else ''}: steps {wanted}, budget {a.budget:.0f} s, "
        f"out {out}, python {py}")

    results = [run_step(log, "preflight", [py, "-c", PREFLIGHT], 90, env)]
    if results[0]["status"] != "ok":
        log("preflight failed: the steps below would fail the same way; stopping")
        summary(out, results, log)
        collect(out, log)
        log.close()
        return 1

    background = []
    if not a.no_background and not a.smoke:
        if any(w in ("load", "e2e", "lora") for w in wanted):
            fmts = ["nvfp4"] + (["w4a16_awq"] if "e2e" in wanted else [])
            writer = [py, "-c", "import sys; sys.path.insert(0, 'benches'); import synthetic; "
                      f"[print(synthetic.ensure_checkpoint('8b', f, {str(cache)!r}), flush=True) for f in {fmts!r}]"]
            background.append(Background(log, "checkpoints", writer, 240, env))
        sweep = [py, "-m", "motensor.kernels.aot_check", "--sweep", "covering", "--arch", "80,89,90",
                 "--jobs", str(max(2, (os.cpu_count() or 4) // 2)), "--quiet"]
        background.append(Background(log, "aot-sweep", ["nice", "-n", "10"] + sweep, 300, env))

    for i, name in enumerate(wanted):
        s = steps[name]
        if name in ("load", "e2e", "lora") and background and background[0].name == "checkpoints":
            background[0].wait(log, deadline - time.monotonic() - 30)
        later = sum(steps[w].floor for w in wanted[i + 1:])
        left = deadline - time.monotonic()
        cap = min(s.cap, left - later)
        if cap < min(20.0, s.floor):
            log(f"== {name}: skipped, {left:.0f} s left of the budget")
            results.append({"step": name, "status": "skipped (budget)", "rc": None, "seconds": 0.0})
            continue
        if s.requires and not _has_module(py, s.requires):
            log(f"== {name}: skipped, {s.requires} is not installed on this machine")
            results.append({"step": name, "status": f"skipped ({s.requires} missing)", "rc": None, "seconds": 0.0})
            continue
        argv = list(s.argv)
        if s.soft_flag:
            argv += [s.soft_flag, str(int(max(cap - 25, 10)))]
        results.append(run_step(log, name, argv, cap, env))
    for b in background:
        r = b.wait(log, min(20.0, deadline - time.monotonic()))
        results.append(r or {"step": b.name, "status": "still running at the end (stopped)", "rc": None,
                             "seconds": round(time.monotonic() - started, 1)})

    stop_all(log)
    kept = collect(out, log)
    summary(out, results, log)
    log(f"files in {out} ({len(kept)} of at most {MAX_FILES}): {', '.join(kept)}")
    log(f"total {time.monotonic() - started:.1f} s")
    log.close()
    _trim_log(out / LOG_NAME)
    bad = [r for r in results if r["status"] not in ("ok",) and not r["status"].startswith("skipped")]
    return 1 if bad else 0


def _trim_log(path: Path) -> None:
    """Keeps the log under the per-file limit: its head and its tail."""
    size = path.stat().st_size
    if size <= MAX_FILE_BYTES:
        return
    keep = MAX_FILE_BYTES // 2 - 4096
    with open(path, "rb") as f:
        head = f.read(keep)
        f.seek(size - keep)
        tail = f.read()
    path.write_bytes(head + f"\n... [{size - 2 * keep} bytes cut] ...\n".encode() + tail)


if __name__ == "__main__":
    sys.exit(main())
