"""The fused Rust CPU kernels (motensor.kernels.cpu) against the torch reference, the oracle.

Both Rust builds (portable scalar and the SIMD one this CPU selects) and both paths (fused and
dequantize + BLAS) must agree with the reference within fp32-summation-order bounds; nothing
here depends on the instruction set the machine has.
"""
from __future__ import annotations

import pytest
import torch

from motensor import ops
from motensor.kernels import cpu
from motensor.kernels import reference as ref

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _close(y: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    # Only the fp32 summation order differs; the output rounding to the activation dtype can
    # then flip by one unit of that dtype.
    assert y.dtype == want.dtype and y.shape == want.shape
    eps = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10, torch.float32: 2 ** -20}[dtype]
    scale = want.float().abs().max().clamp_min(1e-6)
    err = (y.float() - want.float()).abs().max()
    assert err <= 2 * eps * scale, f"max err {err} vs scale {scale}"


def _variants():
    for fs in (True, False):
        for path in ("fused", "dequant_blas", "dequant_bf16_blas"):
            yield dict(force_scalar=fs, path=path)


def _w4_inputs(n, k, g, element, scale_kind, gen):
    q = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=gen)
    if scale_kind == "E4M3":
        s = (torch.rand(k // g, n, generator=gen) * 3 + 0.05).to(torch.float8_e4m3fn)
    elif scale_kind == "E8M0":
        s = torch.randint(120, 130, (k // g, n), dtype=torch.uint8, generator=gen)
    else:
        s = torch.rand(k // g, n, generator=gen) * 0.02
    return q, s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("element,scale_kind,g", [("E2M1", "E4M3", 16), ("E2M1", "E8M0", 32), ("INT4", "F32", 128)])
@pytest.mark.parametrize("m", [1, 3, 20])
def test_w4a16(dtype, element, scale_kind, g, m):
    gen = torch.Generator().manual_seed(m * 7 + g)
    n, k = 72, 256
    q, s = _w4_inputs(n, k, g, element, scale_kind, gen)
    gs = torch.tensor(0.013) if scale_kind == "E4M3" else None
    bias = torch.randn(n, generator=gen).to(dtype)
    x = torch.randn(2, m, k, generator=gen).to(dtype)
    want = ref.w4a16_gemm(x, q, s, gs, element=element, scale_kind=scale_kind, group_size=g, bias=bias)
    for v in _variants():
        y = cpu.w4a16_gemm(x, q, s, gs, bias, element, scale_kind, g, **v)
        _close(y, want, dtype)
    _close(ops.w4a16_gemm(x, q, s, gs, bias, element, scale_kind, g), want, dtype)


@pytest.mark.parametrize("element,scale_kind,g", [("INT4", "F32", 128), ("E2M1", "E4M3", 16)])
@pytest.mark.parametrize("m", [1, 5])
def test_w4a8(element, scale_kind, g, m):
    gen = torch.Generator().manual_seed(11 + m)
    n, k = 40, 256
    q, s = _w4_inputs(n, k, g, element, scale_kind, gen)
    ws2, is_ = torch.tensor(0.004), torch.tensor(0.02)
    x = torch.randn(m, k, generator=gen).bfloat16()
    want = ref.w4a8_gemm(x, q, s, ws2, is_, element=element, scale_kind=scale_kind, group_size=g)
    for v in _variants():
        _close(cpu.w4a8_gemm(x, q, s, ws2, is_, None, element, scale_kind, g, **v), want, torch.bfloat16)


@pytest.mark.parametrize("scale_kind", ["F32", "E8M0"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_w8a16(scale_kind, dtype):
    gen = torch.Generator().manual_seed(3)
    n, k = 200, 256
    w = (torch.randn(n, k, generator=gen) * 50).to(torch.float8_e4m3fn)
    if scale_kind == "F32":
        s, b = torch.rand(2, 2, generator=gen) + 0.5, 128
    else:
        s, b = torch.randint(120, 130, (k // 32, n), dtype=torch.uint8, generator=gen), 32
    x = torch.randn(4, k, generator=gen).to(dtype)
    want = ref.w8a16_gemm(x, w, s, scale_kind=scale_kind, block_size=b)
    for v in _variants():
        _close(cpu.w8a16_gemm(x, w, s, None, scale_kind, b, **v), want, dtype)


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_fp8_linear(static, per_channel):
    gen = torch.Generator().manual_seed(5)
    n, k = 96, 160
    w = (torch.randn(n, k, generator=gen) * 30).to(torch.float8_e4m3fn)
    sw = torch.rand(n, generator=gen) * 0.01 if per_channel else torch.tensor(0.003)
    is_ = torch.tensor(0.01) if static else None
    bias = torch.randn(n, generator=gen).bfloat16()
    x = torch.randn(3, k, generator=gen).bfloat16()
    want = ref.fp8_linear(x, w, sw, is_, bias)
    for v in _variants():
        _close(cpu.fp8_linear(x, w, sw, is_, bias, **v), want, torch.bfloat16)
    _close(ops.fp8_linear(x, w, sw, is_, bias), want, torch.bfloat16)


@pytest.mark.parametrize("static", [True, False])
def test_int8_linear(static):
    gen = torch.Generator().manual_seed(9)
    n, k = 64, 300
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    sw = torch.rand(n, generator=gen) * 0.01
    is_ = torch.tensor(0.02) if static else None
    x = torch.randn(5, k, generator=gen).bfloat16()
    want = ref.int8_linear(x, w, sw, is_, None)
    for v in _variants():
        _close(cpu.int8_linear(x, w, sw, is_, None, **v), want, torch.bfloat16)
    if static:  # exact integer sums and the same fp32 epilogue: equal
        assert torch.equal(cpu.int8_linear(x, w, sw, is_, None), want)


def test_reference_mode_and_fallbacks(monkeypatch):
    q = torch.zeros(8, 16, dtype=torch.uint8)
    s = torch.ones(2, 8).to(torch.float8_e4m3fn)
    x = torch.randn(1, 32)
    # A scale tensor of an unexpected dtype is left to the reference.
    assert cpu.w4a16_gemm(x, q, s.float(), None, None, "E2M1", "E4M3", 16) is None
    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")
    assert cpu.w4a16_gemm(x, q, s, None, None, "E2M1", "E4M3", 16) is None
    assert "reference" in cpu.describe(1)
    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "scalar")
    assert cpu.isa() == "scalar"


def test_bad_buffers_raise():
    from motensor import _core
    from motensor.errors import ArgumentError

    q = torch.zeros(8, 16, dtype=torch.uint8)
    s = torch.ones(2, 8).to(torch.float8_e4m3fn)
    x = torch.randn(1, 32)
    out = torch.empty(1, 8)
    with pytest.raises(ArgumentError):  # x too short for K
        _core.cpu_gemm(x[:, :31].contiguous(), out, 1, "w4", 8, 32, q, s, "E2M1", "E4M3", 16, None, None,
                       "float32", None, None, None, False)
    with pytest.raises(ArgumentError):  # non-contiguous
        _core.cpu_gemm(torch.randn(1, 64)[:, ::2], out, 1, "w4", 8, 32, q, s, "E2M1", "E4M3", 16, None, None,
                       "float32", None, None, None, False)
    with pytest.raises(ArgumentError):  # wrong dtype
        _core.cpu_gemm(x.double(), out, 1, "w4", 8, 32, q, s, "E2M1", "E4M3", 16, None, None,
                       "float32", None, None, None, False)
    with pytest.raises(ArgumentError):  # output aliasing an input
        _core.cpu_gemm(x, x[:, :8], 1, "w4", 8, 32, q, s, "E2M1", "E4M3", 16, None, None,
                       "float32", None, None, None, False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("per_row", [False, True])
def test_nvfp4_fake_quant_is_the_reference_bit_for_bit(dtype, per_row):
    gen = torch.Generator().manual_seed(21)
    x = (torch.randn(5, 3, 64, generator=gen) * torch.logspace(-3, 3, 64)).to(dtype)
    x[0, 0, :16] = 0                                     # an all-zero block: scale 0 -> zeros
    x[0, 1, :16] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25] * 2).to(dtype)  # E2M1 ties
    x[1, 2, 3] = float("nan")                            # NaN propagates through its block's scale
    gs = torch.rand(5, 3, generator=gen) * 0.1 if per_row else torch.tensor(0.0137)
    want = ref.nvfp4_fake_quant(x, gs)
    got = cpu.nvfp4_fake_quant(x, gs)
    assert got is not None and got.dtype == want.dtype
    same = (got == want) | (got.isnan() & want.isnan())
    assert bool(same.all()), (got - want).abs().nan_to_num().max()
    assert torch.equal(got.signbit(), want.signbit())
    assert torch.equal(ops.nvfp4_fake_quant(x, gs).nan_to_num(), want.nan_to_num())
    zero = torch.zeros((), dtype=torch.float32)
    got0, want0 = cpu.nvfp4_fake_quant(x, zero), ref.nvfp4_fake_quant(x, zero)  # input_scale 0
    assert torch.equal(got0.isnan(), want0.isnan()) and torch.equal(got0.nan_to_num(), want0.nan_to_num())
