"""benches/e2e.py's harness on the CPU (``--smoke``): the result file and its picture.

The GPU figures themselves come from running ``benches/e2e.py`` on a GPU machine; this checks the
code path that writes them (a tiny synthetic checkpoint, motensor eager only, to stay fast).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_e2e():
    spec = importlib.util.spec_from_file_location("motensor_bench_e2e", ROOT / "benches" / "e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_e2e_smoke_writes_results(tmp_path):
    e2e = load_e2e()
    rc = e2e.main(["--smoke", "--formats", "w4a16_awq", "--no-compiled", "--no-hf", "--repeat", "1",
                   "--out", str(tmp_path)])
    assert rc == 0
    (json_path,) = tmp_path.glob("e2e-cpu-*.json")
    doc = json.loads(json_path.read_text())
    assert doc["bench"] == "e2e" and "failures" not in doc, doc.get("failures")
    assert set(doc["machine"]) >= {"gpu", "torch", "cuda", "triton", "cpus", "motensor"}
    cases = {(r["case"], r["impl"], r["metric"]) for r in doc["rows"]}
    assert cases == {
        ("tiny-load-to-first-token", "motensor_W4A16_AWQ", "s"),
        ("tiny-decode-b1", "motensor_W4A16_AWQ", "tok/s"),
        ("tiny-decode-b2", "motensor_W4A16_AWQ", "tok/s"),
        ("tiny-prefill-64", "motensor_W4A16_AWQ", "tok/s"),
    }
    assert all(r["value"] > 0 for r in doc["rows"])
    png = json_path.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_gpu_short_names():
    e2e = load_e2e()
    names = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H200": "h200", "NVIDIA A100-SXM4-80GB": "a100",
             "NVIDIA L40S": "l40s", "NVIDIA GeForce RTX 4090": "rtx4090", "NVIDIA B200": "b200",
             "NVIDIA GB200": "gb200", "Tesla V100-SXM2-16GB": "v100"}
    assert {n: e2e.gpu_short(n) for n in names} == names
