"""`make gpu-check` (scripts/gpu_check.py) on the CPU: it refuses without a GPU, and its whole
plumbing (steps with caps, the junit XML, the three benchmarks' --quick modes at --smoke sizes,
partial results, the <= 8 files of <= 16 MiB that the device tool brings back) dry-runs here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def test_refuses_without_a_gpu_at_once(tmp_path):
    env = dict(os.environ, MOTENSOR_GPU_CHECK_FAKE_NO_GPU="1", OUT=str(tmp_path / "out"))
    r = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "needs a CUDA GPU" in r.stderr
    assert not (tmp_path / "out").exists()      # nothing started, nothing written


def test_partial_results_are_kept_and_strays_removed(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = tmp_path / "out"
    out.mkdir()
    log = gpu_check.Log(out / gpu_check.LOG_NAME)
    doc = {"bench": "gemm", "command": "x", "machine": {"gpu": "NVIDIA H100 80GB HBM3"}, "rows": []}
    (out / "gemm-partial.json").write_text(json.dumps(doc))
    (out / "stray.txt").write_text("x")
    (out / "junk").mkdir()
    kept = gpu_check.collect(out, log)
    log.close()
    assert "stray.txt" not in kept and "junk" not in kept and "gemm-partial.json" not in kept
    gemm = [k for k in kept if k.startswith("gemm-h100-") and k.endswith(".json")]
    assert len(gemm) == 1 and "partial" in json.loads((out / gemm[0]).read_text())["status"]


@pytest.mark.slow
def test_smoke_run_writes_at_most_8_small_files(tmp_path):
    out = tmp_path / "gpu-check"
    env = dict(os.environ)
    env.pop("OUT", None)
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--budget", "1500"], env=env,
                       capture_output=True, text=True, timeout=1800)
    files = sorted(p.name for p in out.iterdir())
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert len(files) <= 8 and all((out / f).is_file() and (out / f).stat().st_size <= 16 << 20 for f in files)
    assert {"gpu-check.log", "pytest-gpu.xml"} <= set(files)
    for bench in ("load", "gemm", "moe", "e2e", "lora"):
        (name,) = [f for f in files if f.startswith(f"{bench}-cpu-") and f.endswith(".json")]
        doc = json.loads((out / name).read_text())
        assert doc["bench"] == bench and doc["rows"] and doc["machine"]["gpu"] is None
        if bench not in ("lora", "moe"):  # their smoke sizes are their own (the CPU dry runs of --quick)
            assert doc.get("quick") is True, bench
    e2e = json.loads((out / [f for f in files if f.startswith("e2e-")][0]).read_text())
    impls = {r["impl"] for r in e2e["rows"]}
    assert {"motensor_NVFP4", "motensor_W4A16_AWQ", "hf_bf16_eager"} <= impls
    assert e2e["skipped"]["motensor_NVFP4_cudagraph"] == "needs CUDA"
    log = (out / "gpu-check.log").read_text()
    for step in ("preflight", "pytest", "load", "gemm", "moe", "e2e", "lora"):
        assert f"== {step}: ok" in log, step
    assert "== summary" in log
