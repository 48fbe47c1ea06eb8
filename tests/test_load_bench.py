"""The load benchmark harness end to end on the CPU (``benches/load.py --dry-run``): a tiny
synthetic checkpoint, every runnable loader, warm and cold, and a result file in the schema of
shared/BENCHMARKS.md. Runs in-process (torch is already imported), writing to a temp dir."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import motensor
from motensor.layout import to_kernel_layout

# GPU-present behaviour (the machine named in results) is checked by make gpu-check too.
pytestmark = pytest.mark.gpu_check

BENCHES = Path(__file__).resolve().parent.parent / "benches"


@pytest.fixture(autouse=True)
def _isolated_imports():
    """The bench scripts put benches/ on sys.path and import their siblings by plain names
    (common, synthetic, plot): undo both after each test."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in ("common", "synthetic", "plot", "load"):
        mod = sys.modules.get(name)
        if mod is not None and str(getattr(mod, "__file__", "")).startswith(str(BENCHES)):
            del sys.modules[name]


def _module(name: str):
    """benches/<name>.py, imported as the scripts import each other."""
    sys.path.insert(0, str(BENCHES))
    spec = importlib.util.spec_from_file_location(name, BENCHES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def synthetic():
    return _module("synthetic")


def test_synthetic_checkpoint_is_a_valid_modelopt_export(synthetic, tmp_path):
    for fmt, algo in synthetic.FORMATS.items():
        path = synthetic.ensure_checkpoint("tiny", fmt, tmp_path)
        assert synthetic.ensure_checkpoint("tiny", fmt, tmp_path) == path  # cached, not rewritten
        ck = motensor.open(path)
        shape = synthetic.SHAPES["tiny"]
        assert ck.quant_config.quant_algo == algo and len(ck.shards) == 4
        assert len(ck.modules) == 7 * shape.layers
        assert ck.total_bytes == synthetic.checkpoint_bytes("tiny", fmt)
        assert set(ck.plain_tensors) >= {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}
        q = ck.modules["model.layers.1.self_attn.q_proj"]
        assert (q.n, q.k) == (shape.hidden, shape.hidden)
        # Valid values: finite weights of the advertised size, positive scales.
        w = ck.dequantize("model.layers.0.mlp.down_proj")
        assert torch.isfinite(w).all() and 0 < w.abs().max() <= synthetic.WEIGHT_AMAX + 1e-6
        assert ck.modules["model.layers.0.mlp.down_proj"].has_pre_quant_scale == (algo == "W4A16_AWQ")
        assert not ck.modules["model.layers.0.mlp.up_proj"].has_pre_quant_scale
        emb = ck.tensor("model.embed_tokens.weight").float()
        assert torch.isfinite(emb).all() and 0.01 < emb.std() < 0.04
        # And motensor.load reads it like any other checkpoint.
        lc = motensor.load(ck, "cpu", progress=False)
        m = ck.modules["model.layers.0.mlp.gate_proj"]
        want = to_kernel_layout(m.format, "weight_scale", ck.tensor(m.tensors["weight_scale"]))
        assert torch.equal(lc.modules[m.name]["weight_scale"].view(torch.uint8), want.view(torch.uint8))


def test_dry_run_writes_a_result_file(tmp_path):
    load_bench = _module("load")
    assert load_bench.main(["--dry-run", "--out-dir", str(tmp_path), "--formats", "nvfp4", "--repeats", "1"]) == 0
    files = list(tmp_path.glob("load-*.json"))
    assert len(files) == 1 and re.fullmatch(r"load-cpu-\d{8}\.json", files[0].name)
    doc = json.loads(files[0].read_text())
    assert doc["bench"] == "load" and doc["dry_run"] is True
    assert "--dry-run" in doc["command"] and doc["machine"]["cpus"] >= 1 and doc["machine"]["gpu"] is None
    rows = {(r["case"], r["impl"], r["metric"]): r for r in doc["rows"]}
    for impl in ("motensor", "safetensors", "raw_pinned_16t"):
        assert rows[("tiny-nvfp4-warm", impl, "GB/s")]["value"] > 0
    assert ("tiny-nvfp4-warm", "motensor", "host_rss_growth_MiB") in rows
    assert "safetensors" in rows[("tiny-nvfp4-warm", "motensor", "GB/s")]["note"]  # the ratio
    # Cold: files evicted with fadvise (no global drop in a dry run) unless the box refuses.
    cold = {k[1] for k in rows if k[0] == "tiny-nvfp4-cold"}
    assert cold == {"motensor", "safetensors", "disk_read_limit"} or any("cold" in k for k in doc["skipped"])
    assert doc["skipped"]["h2d_pinned_limit"] == "needs CUDA"
    assert all(set(r) <= {"case", "impl", "metric", "value", "note"} for r in doc["rows"])


def test_gpu_short_names():
    common = _module("common")
    assert common.gpu_short_name("NVIDIA H100 80GB HBM3") == "h100"
    assert common.gpu_short_name("NVIDIA H200") == "h200"
    assert common.gpu_short_name("NVIDIA A100-SXM4-80GB") == "a100"
    assert common.gpu_short_name(None) == "cpu"
