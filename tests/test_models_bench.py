"""benches/e2e.py's harness on the CPU (``--smoke``): the result file (and its picture, with matplotlib).

The GPU figures themselves come from running ``benches/e2e.py`` on a GPU machine; this checks the
code path that writes them (a tiny synthetic checkpoint, motensor eager only, to stay fast).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

# GPU-present behaviour (the machine named in results) is checked by make gpu-check too.
pytestmark = pytest.mark.gpu_check

ROOT = Path(__file__).resolve().parent.parent


def load_e2e():
    spec = importlib.util.spec_from_file_location("motensor_bench_e2e", ROOT / "benches" / "e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_e2e_smoke_writes_results(tmp_path):
    e2e = load_e2e()
    rc = e2e.main(["--smoke", "--formats", "w4a16_awq", "--no-compiled", "--no-hf", "--repeat", "1",
                   "--batches", "2", "--out", str(tmp_path)])
    assert rc == 0
    (json_path,) = tmp_path.glob("e2e-cpu-*.json")
    doc = json.loads(json_path.read_text())
    assert doc["bench"] == "e2e" and "failures" not in doc, doc.get("failures")
    assert set(doc["machine"]) >= {"gpu", "torch", "cuda", "triton", "cpus", "motensor"}
    cases = {(r["case"], r["impl"], r["metric"]) for r in doc["rows"]}
    assert cases == {
        ("tiny-load-to-first-token", "motensor_W4A16_AWQ", "s"),
        ("tiny-decode-b2", "motensor_W4A16_AWQ", "tok/s"),
        ("tiny-prefill-64", "motensor_W4A16_AWQ", "tok/s"),
    }
    assert all(r["value"] > 0 for r in doc["rows"])
    if importlib.util.find_spec("matplotlib") is not None:  # benches/plot.py draws only with it
        assert json_path.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
