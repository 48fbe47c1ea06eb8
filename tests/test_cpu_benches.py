"""The CPU benchmarks of issue 15 end to end at their ``--smoke`` sizes (``benches/cpu_load.py``,
``benches/open_scale.py``, ``benches/cpu_decode.py``): each writes a result file in the schema of
shared/BENCHMARKS.md with every loader / implementation it promises. Figures are not asserted
(no timed tests); what motensor controls is: what was loaded, how many tensors were opened."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

import motensor

BENCHES = Path(__file__).resolve().parent.parent / "benches"
ROW_KEYS = {"case", "impl", "metric", "value", "note"}


@pytest.fixture(autouse=True)
def _isolated_imports():
    """The bench scripts put benches/ on sys.path and import their siblings by plain names:
    undo both after each test."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in ("common", "synthetic", "plot", "cpu_load", "open_scale", "cpu_decode"):
        mod = sys.modules.get(name)
        if mod is not None and str(getattr(mod, "__file__", "")).startswith(str(BENCHES)):
            del sys.modules[name]


def _module(name: str):
    sys.path.insert(0, str(BENCHES))
    spec = importlib.util.spec_from_file_location(name, BENCHES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _doc(out: Path, bench: str) -> dict:
    files = list(out.glob(f"{bench}-*.json"))
    assert len(files) == 1 and re.fullmatch(rf"{bench}-cpu-\d{{8}}\.json", files[0].name)
    doc = json.loads(files[0].read_text())
    assert doc["bench"] == bench and doc["smoke"] is True and "--smoke" in doc["command"]
    assert doc["machine"]["gpu"] is None and doc["machine"]["cpus"] >= 1
    assert all(set(r) <= ROW_KEYS for r in doc["rows"])
    return doc


def test_cpu_load_smoke(tmp_path):
    bench = _module("cpu_load")
    assert bench.main(["--smoke", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    doc = _doc(tmp_path, "cpu_load")
    rows = {(r["impl"], r["metric"]): r["value"] for r in doc["rows"]}
    synthetic = sys.modules["synthetic"]
    assert doc["checkpoint"]["tensor_bytes"] == synthetic.checkpoint_bytes("tiny", "nvfp4")
    assert rows[("checkpoint_size", "peak_rss_MiB")] == round(doc["checkpoint"]["tensor_bytes"] / 2**20, 3)
    for impl in bench.IMPLS:
        assert rows[(impl, "GB/s")] > 0 and rows[(impl, "GB/s_touched")] > 0
        assert rows[(impl, "peak_rss_MiB")] >= 0 and rows[(impl, "peak_anon_MiB")] >= 0


def test_cpu_load_child_loads_every_tensor(tmp_path):
    """The measured child returns every tensor of the checkpoint, each page read once."""
    bench = _module("cpu_load")
    path = sys.modules["synthetic"].ensure_checkpoint("tiny", "nvfp4", tmp_path)
    got = {impl: bench.child(impl, path) for impl in bench.IMPLS}
    n = len(motensor.open(path).tensor_names())
    assert {g["tensors"] for g in got.values()} == {n}
    # The two safetensors loaders read the same bytes (motensor re-lays scales out, so its
    # sampled bytes differ).
    assert got["safetensors_load_file"]["touched"] == got["safetensors_safe_open"]["touched"]


def test_open_scale_smoke(tmp_path):
    bench = _module("open_scale")
    assert bench.main(["--smoke", "--out-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]) == 0
    doc = _doc(tmp_path, "open_scale")
    impls = {"motensor_open", "motensor_plan", "motensor_plan_items", "safetensors_safe_open", "json_loads"}
    cases: dict[str, set[str]] = {}
    for r in doc["rows"]:
        cases.setdefault(r["case"], set()).add(r["impl"])
        assert r["metric"] == "ms" and r["value"] >= 0
    assert len(cases) == 3 and all(v == impls for v in cases.values())
    # Case names carry the tensor count the generator wrote.
    want = {name: sum(len(g) for g in bench._moe_groups(bench.SMOKE[name])[0]) for name in ("qwen3moe", "deepseek")}
    for name, n in want.items():
        assert f"{name}-{n}" in cases


def test_sparse_checkpoints_open_and_plan_every_tensor(tmp_path):
    """The sparse MoE checkpoints are valid ModelOpt exports: every expert a quantized module,
    routers excluded, the plan covering every tensor; no bulk data is stored."""
    bench = _module("open_scale")
    for name in ("qwen3moe", "deepseek"):
        shape = bench.SMOKE[name]
        path = bench.ensure_sparse(name, True, tmp_path)
        ck = motensor.open(path)
        routed = shape.moe_layers * (shape.experts * 3 + (3 if shape.shared else 0))
        dense = (shape.layers - shape.moe_layers) * 3
        assert len(ck.modules) == routed + dense + shape.layers * len(shape.attention)
        assert all(m.format.name == "NVFP4" for m in ck.modules.values())
        assert not any(n.endswith("mlp.gate") for n in ck.modules)
        plan = ck._core.plan(None)
        assert len(plan) == len(ck.tensor_names()) and plan.source_bytes == ck.total_bytes
        disk = sum(f.stat().st_blocks * 512 for f in path.glob("*.safetensors"))
        assert disk < ck.total_bytes


def test_cpu_decode_smoke(tmp_path):
    bench = _module("cpu_decode")
    assert bench.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    doc = _doc(tmp_path, "cpu_decode")
    rows = {(r["case"], r["impl"], r["metric"]): r for r in doc["rows"]}
    for impl in ("motensor_NVFP4", "hf_bf16_eager"):
        for metric in ("tok/s", "tok/s_cpu"):
            assert rows[("demo-decode-b1", impl, metric)]["value"] > 0
    assert "x hf_bf16_eager" in rows[("demo-decode-b1", "motensor_NVFP4", "tok/s")]["note"]


def test_bf16_reference_holds_the_dequantized_weights():
    """The decode bench's bf16 peer: the same architecture, every quantized Linear holding
    exactly the checkpoint's dequantized weight (in bf16), every other tensor the checkpoint's."""
    import torch

    bench = _module("cpu_decode")
    ref = bench.bf16_reference(bench.DEMO)
    ck = motensor.open(bench.DEMO)
    params = dict(ref.named_parameters())
    name = next(iter(ck.modules))
    assert torch.equal(params[f"{name}.weight"], ck.dequantize(name).to(torch.bfloat16))
    assert torch.equal(params["model.embed_tokens.weight"], ck.tensor("model.embed_tokens.weight").to(torch.bfloat16))
    assert all(p.dtype == torch.bfloat16 for p in params.values())
