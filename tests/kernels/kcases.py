"""Shared data generators and checks for the kernel tests (random, never all-zero, seeded)."""
from __future__ import annotations

import torch

from motensor.kernels import reference as R

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# ||y - ref|| / ||ref|| bounds. fp32: the kernels and the reference differ only in summation
# order (and fp16 operand rounding where documented); fp16/bf16: output rounding (2^-11 / 2^-8
# relative per element) plus operand rounding of the prescaled weight paths.
REL_TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
REL_TOL_TF32 = 2e-3   # fp32 activations on a GPU run tf32 tensor cores (10-bit mantissas: ~5e-4 seen)
# fp8 x fp8 tensor-core products are exact, but Hopper adds them with fewer than fp32's bits before
# each promotion to the fp32 accumulator (every 32 products, kernels/w4a8.FP8_IMPRECISE_ACC).
REL_TOL_FP8_MMA = 1e-3


def tol(dtype: torch.dtype, mma: bool = True, fp8: bool = False) -> float:
    """The bound for a kernel vs the reference on this machine: the interpreter computes fp32 dots
    in fp32; a GPU runs fp32 operands as tf32, and fp8 MMAs with a reduced-precision adder."""
    if DEVICE != "cuda" or not mma:
        return REL_TOL[dtype]
    if fp8:
        return max(REL_TOL[dtype], REL_TOL_FP8_MMA)
    return REL_TOL_TF32 if dtype == torch.float32 else REL_TOL[dtype]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_w4(n: int, k: int, element: str, scale_kind: str, group: int, seed: int, device=DEVICE):
    """Random 4-bit weight in the kernel layout: (qweight, scales, global_scale or None)."""
    g = gen(seed)
    qweight = R.pack_4bit(torch.randint(0, 16, (n, k), generator=g))
    if scale_kind == "E4M3":
        scales = (torch.rand(k // group, n, generator=g) * 4 + 0.05).to(torch.float8_e4m3fn)
        gs = torch.tensor(0.0137)
    elif scale_kind == "E8M0":
        scales = torch.randint(118, 131, (k // group, n), generator=g, dtype=torch.uint8)
        gs = None
    else:
        scales = torch.rand(k // group, n, generator=g) * 0.02 + 0.001
        gs = None
    mv = lambda t: None if t is None else t.to(device)
    return mv(qweight), mv(scales), mv(gs)


def make_x(shape, dtype, seed: int, device=DEVICE, scale: float = 1.0):
    return (torch.randn(shape, generator=gen(seed)) * scale).to(dtype).to(device)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def assert_rel(y: torch.Tensor, ref: torch.Tensor, rel: float):
    """Same shape/dtype, all finite, norm-relative error <= rel and no single element far off."""
    assert y.shape == ref.shape and y.dtype == ref.dtype, (y.shape, y.dtype, ref.shape, ref.dtype)
    assert torch.isfinite(y).all(), "non-finite output"
    e = rel_err(y, ref)
    assert e <= rel, f"relative error {e:.3e} > {rel:.1e}"
    worst = (y.double() - ref.double()).abs().max().item()
    assert worst <= 16 * rel * ref.double().abs().max().item() + 1e-12, f"max abs error {worst:.3e}"
