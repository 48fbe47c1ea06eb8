"""The GEMM benchmark harness on the CPU (``benches/gemm.py --smoke``): a tiny shape, two formats,
M in {1, 3}, a result file in the schema of shared/BENCHMARKS.md; plus the pieces that only run
on a GPU, checked where a CPU stand-in exists (tinygemm operand forms, the target summary)."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

# GPU-present behaviour (the machine named in results) is checked by make gpu-check too.
pytestmark = pytest.mark.gpu_check

BENCHES = Path(__file__).resolve().parent.parent / "benches"


@pytest.fixture()
def gemm():
    """benches/gemm.py imported as the scripts import each other (benches/ on sys.path), undone after."""
    path = list(sys.path)
    sys.path.insert(0, str(BENCHES))
    spec = importlib.util.spec_from_file_location("gemm", BENCHES / "gemm.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gemm"] = mod
    spec.loader.exec_module(mod)
    yield mod
    sys.path[:] = path
    for name in ("common", "plot", "gemm"):
        m = sys.modules.get(name)
        if m is not None and str(getattr(m, "__file__", "")).startswith(str(BENCHES)):
            del sys.modules[name]


def test_smoke_writes_a_result_file(gemm, tmp_path):
    assert gemm.main(["--smoke", "--out-dir", str(tmp_path), "--formats", "NVFP4,W4A16_AWQ", "--m", "1,3"]) == 0
    files = list(tmp_path.glob("gemm-*.json"))
    assert len(files) == 1 and re.fullmatch(r"gemm-cpu-\d{8}\.json", files[0].name)
    assert not (tmp_path / "gemm-partial.json").exists()
    doc = json.loads(files[0].read_text())
    assert doc["bench"] == "gemm" and doc["smoke"] is True and doc["status"] == "complete"
    assert "--smoke" in doc["command"] and doc["machine"]["gpu"] is None and doc["bandwidth_GBps"] > 0
    assert all(set(r) <= {"case", "impl", "metric", "value", "note"} and r["metric"] == "us" for r in doc["rows"])
    rows = {(r["case"], r["impl"]): r for r in doc["rows"]}
    n, k = gemm.SMOKE_SHAPE
    for m in (1, 3):
        case = f"{m}x{n}x{k}"
        for impl in ("motensor_NVFP4", "motensor_NVFP4_gemm", "motensor_W4A16_AWQ", "cublas_bf16",
                     "naive_dequant", "roofline", "roofline_NVFP4", "roofline_W4A16_AWQ", "roofline_bf16"):
            assert rows[(case, impl)]["value"] > 0, (case, impl)
        mo = rows[(case, "motensor_NVFP4")]["note"]
        # the ratios, dispatch's choice (the CPU reference here) and a sane error vs bf16
        assert mo.startswith("ratios: ") and "x roofline" in mo and "w4a16_cpu_fused" in mo
        err = float(re.search(r"rel err vs cublas_bf16 ([0-9.e-]+)", mo).group(1))
        assert 0.01 < err < 0.3
        assert (case, "motensor_W4A16_AWQ_gemm") not in rows  # the forward is the op itself
    # GPU-only peers are listed, not reported as results
    for impl in ("scaled_mm_fp8", "tinygemm_int4", "gemlite_a16w4"):
        assert impl in doc["skipped"] and not any(i == impl for _, i in rows)
    assert "motensor_NVFP4" in doc["plot_groups"]["4-bit weights"]


def test_tinygemm_operand_forms_are_checked(gemm, monkeypatch):
    """The CPU twins of the tinygemm ops take int32 [N, K] codes and the same scale/zero tensor:
    the preparation must reject the uint8 forms and settle on the one that multiplies right."""
    from motensor.formats import get_format
    from motensor.layout import to_kernel_layout
    from motensor.quantize import quantize_weight

    spec = get_format("W4A16_AWQ")
    q = quantize_weight(spec, torch.randn(32, 256) * 0.02)
    qw, sc = to_kernel_layout(spec, "weight", q["weight"]), to_kernel_layout(spec, "weight_scale", q["weight_scale"])
    monkeypatch.setattr(torch, "_convert_weight_to_int4pack", torch._convert_weight_to_int4pack_for_cpu, raising=False)
    monkeypatch.setattr(torch, "_weight_int4pack_mm", torch._weight_int4pack_mm_for_cpu, raising=False)
    packed, sz, form = gemm.tinygemm_prepare(qw, sc)
    assert "int32" in form and sz.shape == (2, 32, 2)
    x = torch.randn(3, 256).to(torch.bfloat16)
    want = x.float() @ ((gemm.unpack_codes(qw).float() - 8) * sc.t().repeat_interleave(128, dim=1)).t()
    got = torch._weight_int4pack_mm(x, packed, 128, sz).float()
    assert float((got - want).norm() / want.norm()) < 0.02


def test_summary_ratios_and_targets(gemm):
    def r(case, impl, v):
        return {"case": case, "impl": impl, "metric": "us", "value": v}

    rows = [
        r("1x14336x4096", "roofline_W4A16_NVFP4", 10.0), r("1x14336x4096", "tinygemm_int4", 25.0),
        r("1x14336x4096", "cublas_bf16", 54.0), r("1x14336x4096", "motensor_W4A16_NVFP4", 12.0),
        r("16x14336x4096", "roofline_W4A16_NVFP4", 10.0), r("16x14336x4096", "tinygemm_int4", 71.0),
        r("16x14336x4096", "motensor_W4A16_NVFP4", 14.0),
        r("1024x14336x4096", "cublas_bf16", 166.0), r("1024x14336x4096", "motensor_W4A16_NVFP4", 200.0),
        r("1024x14336x4096", "scaled_mm_fp8", 94.0), r("1024x14336x4096", "motensor_W4A8_AWQ", 110.0),
        r("1024x14336x4096", "motensor_FP8", None),
    ]
    table, targets = gemm.summarize(rows)
    got = {(t["target"].split(":")[1].strip(), t["impl"]): t for t in targets}
    roof = got[("<= 1.3x roofline", "motensor_W4A16_NVFP4")]
    assert roof["cases"] == 2 and roof["met"] is False and roof["worst"] == 1.4 and roof["worst_case"] == "16x14336x4096"
    tiny = got[(">= 1.8x faster than tinygemm", "motensor_W4A16_NVFP4")]
    assert tiny["met"] is True and tiny["worst"] == pytest.approx(25 / 12, abs=1e-3)
    assert got[(">= 0.9x cuBLAS bf16 speed", "motensor_W4A16_NVFP4")]["met"] is False
    assert got[("<= 1.2x _scaled_mm FP8", "motensor_W4A8_AWQ")]["met"] is True
    fp8 = got[("<= 1.05x _scaled_mm FP8", "motensor_FP8")]
    assert fp8["met"] is None and fp8["measured"] == 0  # a failed row is never "met"
    assert any(line.startswith("16x14336x4096") and "1.40" in line for line in table)
    gemm.annotate(rows)
    assert rows[3]["note"].startswith("ratios: 1.20x roofline, 0.22x cublas_bf16, 0.48x tinygemm_int4")
    assert "n/a" in "\n".join(gemm.target_lines(targets))


def test_shape_and_format_options(gemm):
    assert gemm.parse_shapes("8b") == [(4096, 4096), (14336, 4096), (4096, 14336)]
    assert len(gemm.parse_shapes("all")) == 6 and gemm.parse_shapes("70b,28672x8192") == list(gemm.SHAPES["70b"])
    assert gemm.parse_formats(["nvfp4,fp8", "W4A16_AWQ"]) == ["NVFP4", "FP8", "W4A16_AWQ"]
    assert gemm.parse_formats(["default"]) == list(gemm.DEFAULT_FORMATS)
    with pytest.raises(SystemExit):
        gemm.parse_formats(["NOPE"])
