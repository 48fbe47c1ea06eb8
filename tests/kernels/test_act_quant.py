"""Activation quantizer kernels vs the reference: bit-exact (torch.equal on values and fp8 codes).

Inputs include the hard cases: every E4M3 value, every rounding tie (midpoints) and its
neighbours, values past +-448, subnormals, all-zero blocks/rows, exact powers of two (the MXFP8
exponent's ceil), E2M1 ties, and the sign of zero.
"""
import pytest
import torch

from kcases import DEVICE, gen
from motensor.kernels import act_quant, reference as R

F16, F32 = torch.float16, torch.float32


def e4m3_hard_values() -> torch.Tensor:
    v = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    v = v[torch.isfinite(v)].unique()
    mids = (v[1:] + v[:-1]) / 2                       # exact ties (fp32 holds them exactly)
    near = torch.cat([mids * (1 + 2 ** -20), mids * (1 - 2 ** -20)])
    big = torch.tensor([448.0, 449.0, 464.0, 470.0, 480.0, 1e4, 3e38, 2.0 ** -10, 2.0 ** -11, 3 * 2.0 ** -11,
                        1e-30, -1e-30, 0.0, -0.0])
    x = torch.cat([v, mids, near, big, -big])
    return torch.cat([x, torch.zeros((-x.numel()) % 64)]).reshape(-1, 64)


def same_bits(a: torch.Tensor, b: torch.Tensor):
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == torch.float8_e4m3fn:
        a, b = a.view(torch.uint8), b.view(torch.uint8)
        assert torch.equal(a.cpu(), b.cpu()), f"{(a.cpu() != b.cpu()).sum().item()} codes differ"
    else:
        ai = a.float().cpu().view(torch.int32)
        bi = b.float().cpu().view(torch.int32)
        assert torch.equal(ai, bi), f"{(ai != bi).sum().item()} values differ"


@pytest.mark.parametrize("scale", [1.0, 0.0371])
def test_fp8_static_ties_and_saturation(scale):
    x = e4m3_hard_values() * scale
    s = torch.tensor(scale)
    q = act_quant.fp8_quant_static(x.to(DEVICE), s.to(DEVICE))
    same_bits(q, R.fp8_quant_static(x, s))


@pytest.mark.parametrize("dtype", [F16, F32])
def test_fp8_static_random_3d(dtype):
    x = (torch.randn(3, 5, 72, generator=gen(1)) * 50).to(dtype)
    s = torch.tensor(0.05)
    same_bits(act_quant.fp8_quant_static(x.to(DEVICE), s.to(DEVICE)), R.fp8_quant_static(x, s))


@pytest.mark.parametrize("dtype", [F16, F32])
def test_fp8_per_token(dtype):
    x = (torch.randn(6, 100, generator=gen(2)) * torch.logspace(-3, 3, 6)[:, None]).to(dtype)
    x[2] = 0                                   # all-zero row: scale 0, codes 0
    x[4, 7] = 1e4 if dtype == F32 else 6e4     # one outlier dominates a row
    q, s = act_quant.fp8_quant_per_token(x.to(DEVICE))
    qr, sr = R.fp8_quant_per_token(x)
    same_bits(q, qr)
    same_bits(s, sr)
    assert s[2].item() == 0 and s.shape == (6, 1)


def test_fp8_per_token_hard_values():
    x = e4m3_hard_values()
    q, s = act_quant.fp8_quant_per_token(x.to(DEVICE))
    qr, sr = R.fp8_quant_per_token(x)
    same_bits(q, qr)
    same_bits(s, sr)


def nvfp4_tie_block(gs: float) -> torch.Tensor:
    """A 16-block whose amax makes s_b = 1 exactly, so x / (s_b * gs) hits every E2M1 tie."""
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, 0.1])
    return ties * gs


@pytest.mark.parametrize("out_dtype", [None, F32])
@pytest.mark.parametrize("dtype", [F16, F32])
def test_nvfp4_fake_quant(dtype, out_dtype):
    gs = 0.0625                                # keeps the tie block exact in fp16 too
    x = torch.randn(5, 96, generator=gen(3)) * 2
    x[0, 16:32] = nvfp4_tie_block(gs)
    x[1, 0:16] = 0                             # zero block
    x[2, 32:48] *= 1e-7                        # s_b underflows -> 0 -> quantizes to 0
    x[3, 48:64] *= 1e4                         # s_b saturates at 448
    x = x.to(dtype)
    s = torch.tensor(gs)
    y = act_quant.nvfp4_fake_quant(x.to(DEVICE), s.to(DEVICE), out_dtype=out_dtype)
    ref = R.nvfp4_fake_quant(x, s, out_dtype=out_dtype)
    same_bits(y, ref)
    assert y.dtype == (out_dtype or dtype)


def test_nvfp4_fake_quant_ties_round_to_even():
    """Independent expectation for the tie block (ModelOpt _cast_fp4 semantics)."""
    gs = 0.0625
    x = torch.zeros(1, 16)
    x[0] = nvfp4_tie_block(gs)
    y = act_quant.nvfp4_fake_quant(x.to(DEVICE), torch.tensor(gs).to(DEVICE)).cpu()
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -0.0, -1.0, -1.0, -2.0, -2.0, -4.0, -4.0, 0.0]) * gs
    assert torch.equal(y[0], want), y[0] / gs


@pytest.mark.parametrize("dtype", [F16, F32])
def test_mxfp8_fake_quant(dtype):
    x = torch.randn(4, 128, generator=gen(4)) * torch.tensor([1e-3, 1.0, 30.0, 1e3])[:, None]
    x[0, :32] = 0                              # zero block -> exponent -127
    x[1, 32:64] = torch.randn(32, generator=gen(7)) * 8
    x[1, 40] = 448.0 * 2.0 ** -3               # amax exactly 448 * 2^k: ceil(log2) must not round up;
    x[1, 33:40] = torch.tensor([3.0, 5, 7, 9, 11, 13, 1]) * 2.0 ** -12   # an exponent 1 too big shows
                                                                          # only in E4M3 subnormals
    x[1, 64:96] = torch.randn(32, generator=gen(8)) * 8
    x[1, 70] = 448.0 * 2.0 ** -3 * (1 + 2 ** -10)   # just above: must round up
    x = x.to(dtype)
    same_bits(act_quant.mxfp8_fake_quant(x.to(DEVICE)), R.mxfp8_fake_quant(x))


def test_mxfp8_fake_quant_extremes_fp32():
    """Block amax from 1e-36 (exponent clamps at -127, fp32 subnormal scale) to 1e36."""
    x = torch.randn(12, 64, generator=gen(6)) * torch.logspace(-36, 36, 12)[:, None]
    same_bits(act_quant.mxfp8_fake_quant(x.to(DEVICE), out_dtype=F32), R.mxfp8_fake_quant(x, out_dtype=F32))


def test_block_quantizers_require_whole_blocks():
    with pytest.raises(ValueError):
        act_quant.nvfp4_fake_quant(torch.zeros(2, 24, device=DEVICE), torch.tensor(1.0, device=DEVICE))
    with pytest.raises(ValueError):
        act_quant.mxfp8_fake_quant(torch.zeros(2, 48, device=DEVICE))


@pytest.mark.gpu
def test_quantizers_bf16_gpu():
    x = (torch.randn(33, 4096, generator=gen(5)) * 3).to(torch.bfloat16).cuda()
    s = torch.tensor(0.01, device="cuda")
    same_bits(act_quant.fp8_quant_static(x, s), R.fp8_quant_static(x, s))
    same_bits(act_quant.fp8_quant_per_token(x)[0], R.fp8_quant_per_token(x)[0])
    same_bits(act_quant.nvfp4_fake_quant(x, s, out_dtype=F32), R.nvfp4_fake_quant(x, s, out_dtype=F32))
    same_bits(act_quant.mxfp8_fake_quant(x), R.mxfp8_fake_quant(x))


class CudaScalarDivision(torch.overrides.TorchFunctionMode):
    """On the CPU, torch's CUDA arithmetic for ``tensor / python_number``: CUDA computes it as
    ``tensor * fp32(1 / number)`` (BinaryDivTrueKernel.cu, a CPU-scalar divisor), one more
    rounding than a division. The kernels divide (``tl.math.div_rn``)."""

    DIVS = {torch.Tensor.__truediv__, torch.Tensor.div, torch.Tensor.true_divide, torch.div, torch.true_divide,
            torch.Tensor.__itruediv__, torch.Tensor.div_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in self.DIVS and len(args) == 2 and isinstance(args[1], (int, float))
                and not kwargs.get("rounding_mode") and args[0].is_floating_point()):
            inv = torch.tensor(1.0) / torch.tensor(float(args[1]))        # fp32 reciprocal
            out = (args[0].float() * inv).to(args[0].dtype)
            return args[0].copy_(out) if func in (torch.Tensor.__itruediv__, torch.Tensor.div_) else out
        return func(*args, **kwargs)


def test_reference_quantizers_divide_like_the_kernels_under_cuda_arithmetic():
    """The references give the same bits with CUDA's scalar-division arithmetic as without it,
    so on a GPU they still equal the kernels (a reference dividing by a Python float moved 15 of
    33 row scales by an ulp and 293 FP8 codes on the first GPU run)."""
    x = torch.cat([e4m3_hard_values(), (torch.randn(40, 64, generator=gen(9)) * 30)]) * 0.37
    with CudaScalarDivision():
        naive = x.abs().amax(dim=-1, keepdim=True) / R.FP8_MAX
    exact = (x.abs().amax(dim=-1, keepdim=True).double() / R.FP8_MAX).float()
    assert not torch.equal(naive, exact), "the emulation must change a plain division (else this test proves nothing)"
    s = torch.tensor(0.0371)
    plain = [R.fp8_quant_per_token(x), R.fp8_quant_static(x, s), R.nvfp4_fake_quant(x, s, out_dtype=F32),
             R.mxfp8_fake_quant(x, out_dtype=F32), R.fp8_fake_quant(x, None)]
    with CudaScalarDivision():
        cuda = [R.fp8_quant_per_token(x), R.fp8_quant_static(x, s), R.nvfp4_fake_quant(x, s, out_dtype=F32),
                R.mxfp8_fake_quant(x, out_dtype=F32), R.fp8_fake_quant(x, None)]
    (q0, s0), (q1, s1) = plain[0], cuda[0]
    same_bits(q0, q1)
    same_bits(s0, s1)
    assert torch.equal(s0, exact), "row scales are the correctly rounded amax / 448"
    for a, b in zip(plain[1:], cuda[1:]):
        same_bits(a, b)
    # and they still equal the kernels
    q, sk = act_quant.fp8_quant_per_token(x.to(DEVICE))
    same_bits(q, q0)
    same_bits(sk, s0)
