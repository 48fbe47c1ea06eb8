"""Kernel dispatch rules (motensor/dispatch.py), exercised with explicit capabilities (no GPU needed)."""
import logging

import pytest
import torch

from motensor import dispatch

BF16, F16, F32 = torch.bfloat16, torch.float16, torch.float32
H100 = (9, 0)


@pytest.mark.parametrize("family,m,name,path", [
    ("w4a16", 1, "w4a16_gemv_splitk", "gemv"),
    ("w4a16", 2, "w4a16_gemv_splitk", "gemv"),
    ("w4a16", 3, "w4a16_dot_splitk", "splitk"),
    ("w4a16", 16, "w4a16_dot_splitk", "splitk"),
    ("w4a16", 17, "w4a16_dot_tiled", "tiled"),
    ("w8a16", 1, "w8a16_dot_splitk", "splitk"),
    ("w8a16", 4096, "w8a16_dot_tiled", "tiled"),
    ("w4a8", 8, "w4a8_fp8_dot_splitk", "splitk"),
    ("w4a8", 64, "w4a8_fp8_dot_tiled", "tiled"),
])
def test_m_rules_on_h100(family, m, name, path, monkeypatch):
    monkeypatch.setattr(dispatch, "cupy_available", lambda: False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    c = dispatch.choose(family, device="cuda", dtype=BF16, M=m, capability=H100)
    assert (c.name, c.path, c.backend) == (name, path, "triton")


def test_large_m_uses_dequant_cublas_only_with_cupy(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "cupy_available", lambda: True)
    c = dispatch.choose("w4a16", device="cuda", dtype=BF16, M=dispatch.DEQUANT_CUBLAS_MIN_M, capability=H100)
    assert (c.name, c.backend) == ("w4a16_dequant_cublas", "cupy+cublas")
    # fp32 activations have no fp32 dequant kernel: stay on Triton
    assert dispatch.choose("w4a16", device="cuda", dtype=F32, M=4096, capability=H100).path == "tiled"
    monkeypatch.setattr(dispatch, "cupy_available", lambda: False)
    assert dispatch.choose("w4a16", device="cuda", dtype=BF16, M=4096, capability=H100).path == "tiled"


def test_operands_by_capability(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    ampere = dispatch.choose("w4a8", device="cuda", dtype=BF16, M=1, capability=(8, 0))
    assert (ampere.name, ampere.operand) == ("w4a8_fp16emu_dot_splitk", "fp16(fp8 values)")
    assert dispatch.choose("w4a8", device="cuda", dtype=BF16, M=1, capability=(8, 9)).operand == "fp8e4m3"
    assert dispatch.choose("w4a16", device="cuda", dtype=F32, M=1, capability=H100).operand == "tf32"
    assert dispatch.choose("w4a16", device="cuda", dtype=F16, M=1, capability=H100).operand == "fp16"


def test_fallbacks_to_the_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")
    cpu = dispatch.choose("w4a16", device="cpu", dtype=BF16, M=1)
    assert (cpu.name, cpu.backend) == ("w4a16_torch_reference", "torch")
    monkeypatch.delenv("MOTENSOR_CPU_KERNELS")
    # Families without a Rust CPU kernel run the reference on the CPU.
    assert dispatch.choose("mxfp8_fake_quant", device="cpu", dtype=BF16, M=1).backend == "torch"
    assert dispatch.choose("nvfp4_fake_quant", device="cpu", dtype=BF16, M=1).backend == "rust"
    assert dispatch.choose("w4a16", device="cuda", dtype=BF16, M=1, capability=(7, 5)).backend == "torch"
    assert dispatch.choose("w4a16", device="cuda", dtype=F16, M=1, capability=(7, 5)).backend == "triton"
    assert dispatch.choose("fp8_quant_static", device="cuda", dtype=F16, M=1, capability=(6, 1)).backend == "torch"
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.choose("w8a16", device="cuda", dtype=BF16, M=1, capability=H100).backend == "torch"


def test_dequant_and_quantizer_families(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(dispatch, "cupy_available", lambda: False)
    assert dispatch.choose("dequant_w4", device="cuda", dtype=BF16, capability=H100).backend == "torch"
    monkeypatch.setattr(dispatch, "cupy_available", lambda: True)
    assert dispatch.choose("dequant_w4", device="cuda", dtype=BF16, capability=H100).name == "dequant_w4_cupy"
    q = dispatch.choose("nvfp4_fake_quant", device="cuda", dtype=BF16, M=7, capability=H100)
    assert (q.name, q.backend) == ("nvfp4_fake_quant_triton", "triton")


def test_cpu_rust_kernels(monkeypatch):
    monkeypatch.delenv("MOTENSOR_CPU_KERNELS", raising=False)
    small = dispatch.choose("w4a16", device="cpu", dtype=BF16, M=dispatch.CPU_FUSED_MAX_M)
    assert (small.name, small.backend, small.path) == ("w4a16_cpu_fused", "rust", "fused")
    large = dispatch.choose("fp8_linear", device="cpu", dtype=F16, M=dispatch.CPU_FP8_FUSED_MAX_M + 1)
    assert (large.name, large.path) == ("fp8_linear_cpu_dequant_blas", "dequant_blas")
    # FP8 x FP8 keeps the fused kernel up to CPU_FP8_FUSED_MAX_M rows where it has bf16 dot products.
    mid = dispatch.choose("fp8_linear", device="cpu", dtype=F16, M=dispatch.CPU_FUSED_MAX_M + 1)
    assert mid.path == ("fused" if dispatch.cpu_isa() == dispatch.CPU_BF16_ISA else "dequant_blas")
    mid_w4 = dispatch.choose("w4a16", device="cpu", dtype=F16, M=dispatch.CPU_FUSED_MAX_M + 1)
    assert mid_w4.path == "dequant_blas"
    # W8A8 keeps its exact int32 kernel at every M.
    assert dispatch.choose("int8_linear", device="cpu", dtype=BF16, M=4096).path == "fused"
    assert dispatch.choose("w8a16", device="cpu", dtype=torch.float64, M=1).backend == "torch"
    assert dispatch.choose("w4a8", device="cpu", dtype=BF16, M=1000, path="fused").path == "fused"
    with pytest.raises(ValueError):
        dispatch.choose("w4a8", device="cpu", dtype=BF16, M=1, path="tiled")
    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "scalar")
    assert "(scalar)" in dispatch.choose("w4a16", device="cpu", dtype=BF16, M=1).reason


def test_forced_path_is_validated():
    c = dispatch.triton_choice("w4a16", "cpu", F16, M=1, path="tiled")
    assert c.path == "tiled" and "forced" in c.reason
    with pytest.raises(ValueError):
        dispatch.triton_choice("w8a16", "cpu", F16, M=1, path="gemv")
    with pytest.raises(ValueError):
        dispatch.choose("w5a5", device="cpu", dtype=F16)


def test_each_choice_is_logged_once(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="motensor.dispatch"):
        for m in (1, 2, 1):
            dispatch.choose("w4a16", device="cuda", dtype=BF16, M=m, capability=H100)
        dispatch.choose("w4a16", device="cuda", dtype=BF16, M=9, capability=H100)
    msgs = [r.getMessage() for r in caplog.records if r.name == "motensor.dispatch"]
    assert len(msgs) == 2, msgs
    assert "w4a16_gemv_splitk" in msgs[0] and "sm90" in msgs[0] and "w4a16_dot_splitk" in msgs[1]


def test_describe_is_inspectable(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    rules = dispatch.describe()
    assert "w4a16_gemv_splitk" in rules and str(dispatch.GEMV_MAX_M) in rules
    one = dispatch.describe("w4a16", device="cuda", dtype=BF16, M=1, capability=H100)
    assert one.startswith("KernelChoice(name='w4a16_gemv_splitk'") and "reason:" in one
