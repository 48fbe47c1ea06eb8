"""W4A8 Triton kernel vs the reference (FP8 activations x 4-bit weights expanded to FP8).

Under the interpreter the fp8 `tl.dot` is checked for real: it is exact when both operands hold
fp8-representable values (the kernel rounds in software first; the interpreter's own fp32->fp8
cast is wrong, see test_interpreter_fp8_facts). The fp16-operand variant (pre-sm89 GPUs) runs the
same dataflow. Products of fp8 values are exact in fp32, so only summation order differs.
"""
import zlib

import pytest
import torch

from kcases import DEVICE, REL_TOL, assert_rel, gen, make_x, tol
from motensor.kernels import _util, reference as R, w4a8

DOT = lambda **kw: dict(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=1, GROUP_M=2), **kw)
F16, F32 = torch.float16, torch.float32
FP8, EMU = "fp8e4m3", "fp16(fp8 values)"


def make_w4a8(n, k, element, group, seed):
    """Realistic W4A8 scales: AWQ weight_scale = amax/7, weight_scale_2 = max|q*s|/448 so that
    q * s / ws2 spans the FP8 range; NVFP4_FP8 block scales <= 448/6 (FORMATS §4.6b)."""
    g = gen(seed)
    qw = R.pack_4bit(torch.randint(0, 16, (n, k), generator=g))
    if element == "INT4":
        s = torch.rand(k // group, n, generator=g) * 0.02 + 0.001
        ws2 = (s.max() * 8 / 448).reshape(())
    else:
        s = (torch.rand(k // group, n, generator=g) * 70 + 0.3).to(torch.float8_e4m3fn)
        ws2 = torch.tensor(0.0023)
    return qw.to(DEVICE), s.to(DEVICE), ws2.to(DEVICE)


# (element, scale_kind, G, N, K, M, path, operand, prequant, dtype, bias, config)
CASES = [
    ("INT4", "F32", 64, 40, 192, 1, "splitk", FP8, False, F16, True, DOT(SPLIT_K=2)),       # chunk in group
    ("INT4", "F32", 32, 40, 96, 3, "splitk", FP8, False, F32, False, DOT(SPLIT_K=2)),        # per-element ratio, tail
    ("INT4", "F32", 128, 24, 256, 17, "tiled", FP8, True, F16, True, DOT(BLOCK_K=128)),
    ("INT4", "F32", 64, 40, 192, 5, "splitk", EMU, True, F32, True, DOT(SPLIT_K=2)),
    ("E2M1", "E4M3", 32, 40, 96, 1, "splitk", FP8, False, F32, True, DOT(SPLIT_K=2)),
    ("E2M1", "E4M3", 32, 40, 96, 17, "tiled", FP8, True, F16, False, DOT()),
    ("E2M1", "E4M3", 32, 24, 64, 257, "tiled", EMU, False, F16, True, DOT(BLOCK_M=32)),
]


def _id(c):
    el, sk, g, n, k, m, path, op, pre, dt, bias, _ = c
    return (f"{el}-{sk}-G{g}-N{n}-K{k}-M{m}-{path}-{'fp8' if op == FP8 else 'fp16emu'}"
            f"{'-prequant' if pre else ''}-{str(dt)[6:]}{'-bias' if bias else ''}")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_w4a8_matches_reference(case):
    el, sk, g, n, k, m, path, op, pre, dtype, has_bias, config = case
    seed = zlib.crc32(_id(case).encode())
    qw, sc, ws2 = make_w4a8(n, k, el, g, seed)
    x = make_x((m, k), dtype, seed + 1, scale=2.0)
    in_s = (x.abs().max().float() / 448 * 0.8).reshape(())     # a few activations saturate
    bias = make_x((n,), dtype, seed + 2) if has_bias else None
    y = w4a8.w4a8_gemm(x, qw, sc, ws2, in_s, element=el, scale_kind=sk, group_size=g, bias=bias, path=path,
                       operand=op, prequant=pre, config=config)
    ref = R.w4a8_gemm(x.cpu(), qw.cpu(), sc.cpu(), ws2.cpu(), in_s.cpu(), element=el, scale_kind=sk,
                      group_size=g, bias=None if bias is None else bias.cpu())
    assert_rel(y.cpu(), ref, tol(dtype, fp8=op == FP8))


@pytest.mark.parametrize("kind", [("INT4", "F32", 32), ("E2M1", "E4M3", 32)])
def test_w4a8_weight_operand_is_exact(kind):
    """One-hot activations with input_scale = 1 make y[k, n] = w_fp8[n, k] * weight_scale_2: a
    single exact product per output, so the expanded FP8 weight is compared bit for bit."""
    el, sk, g = kind
    n, k = 24, 64
    qw, sc, ws2 = make_w4a8(n, k, el, g, seed=21)
    x = torch.eye(k, dtype=F32, device=DEVICE)
    y = w4a8.w4a8_gemm(x, qw, sc, ws2, torch.tensor(1.0, device=DEVICE), element=el, scale_kind=sk,
                       group_size=g, path="tiled", operand=FP8, prequant=False, config=DOT())
    w = R.w4a8_weight_fp8(qw.cpu(), sc.cpu(), ws2.cpu(), element=el, scale_kind=sk, group_size=g)
    assert torch.equal(y.cpu(), w.t() * ws2.cpu())


def test_w4a8_differs_from_unquantized_activations():
    """The activation really is quantized: the W4A16 result (same weights) is measurably different."""
    qw, sc, ws2 = make_w4a8(24, 64, "E2M1", 32, seed=3)
    x = make_x((5, 64), F32, seed=4)
    in_s = (x.abs().max() / 448).reshape(())
    y = w4a8.w4a8_gemm(x, qw, sc, ws2, in_s, element="E2M1", scale_kind="E4M3", group_size=32, path="splitk",
                       operand=FP8, config=DOT())
    w16 = R.w4a16_gemm(x.cpu(), qw.cpu(), sc.cpu(), ws2.cpu(), element="E2M1", scale_kind="E4M3", group_size=32)
    err = ((y.cpu() - w16).norm() / w16.norm()).item()
    assert 1e-4 < err < 0.1, err


def test_w4a8_rejects_mx_scales():
    qw, sc, _ = make_w4a8(24, 64, "E2M1", 32, seed=5)
    x = make_x((1, 64), F16, seed=6)
    e8 = torch.full((2, 24), 127, dtype=torch.uint8, device=DEVICE)
    with pytest.raises(NotImplementedError):
        w4a8.w4a8_gemm(x, qw, e8, torch.tensor(1.0), torch.tensor(1.0), element="E2M1", scale_kind="E8M0",
                       group_size=32)


@pytest.mark.skipif(DEVICE != "cpu", reason="interpreter facts")
def test_interpreter_fp8_facts():
    """Why the kernels round to E4M3 in software: the interpreter's fp32->fp8 cast does not carry
    a mantissa overflow into the exponent (126.2 -> 64), while exactly representable values and
    fp8 tl.dot are fine. If a Triton upgrade fixes the cast, this test says so."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast(x_ptr, o_ptr):
        r = tl.arange(0, 4)
        tl.store(o_ptr + r, tl.load(x_ptr + r).to(tl.float8e4nv).to(tl.float32))

    x = torch.tensor([126.2, 3.0, -7.9, 0.5])
    o = torch.empty(4)
    cast[(1,)](x, o)
    assert o[1] == 3.0 and o[3] == 0.5
    assert o[0] == 64.0 and o[2] == -4.0, f"interpreter fp8 cast changed: {o.tolist()}"


def test_hw_cvt_refused_in_interpreter():
    if not _util.interpreting():
        pytest.skip("interpreter only")
    qw, sc, ws2 = make_w4a8(24, 64, "E2M1", 32, seed=7)
    x = make_x((1, 64), F16, seed=8)
    with pytest.raises(ValueError, match="hw_cvt"):
        w4a8.w4a8_gemm(x, qw, sc, ws2, torch.tensor(0.01), element="E2M1", scale_kind="E4M3", group_size=32,
                       operand=FP8, hw_cvt=True)


@pytest.mark.gpu
@pytest.mark.parametrize("hw_cvt", [False, True])
@pytest.mark.parametrize("path,m", [("splitk", 3), ("tiled", 300)])
@pytest.mark.parametrize("kind", [("INT4", "F32", 128), ("E2M1", "E4M3", 32)])
def test_w4a8_gpu(kind, path, m, hw_cvt):
    el, sk, g = kind
    cap = torch.cuda.get_device_capability()
    if hw_cvt and cap < (8, 9):
        pytest.skip("hardware fp8 cvt needs sm89")
    qw, sc, ws2 = make_w4a8(1000, 1024, el, g, seed=9)
    x = make_x((m, 1024), torch.bfloat16, seed=10)
    in_s = (x.abs().max().float() / 448).reshape(())
    y = w4a8.w4a8_gemm(x, qw, sc, ws2, in_s, element=el, scale_kind=sk, group_size=g, path=path, hw_cvt=hw_cvt)
    assert_rel(y, R.w4a8_gemm(x, qw, sc, ws2, in_s, element=el, scale_kind=sk, group_size=g),
               REL_TOL[torch.bfloat16])


@pytest.mark.parametrize("path", ["splitk", "tiled"])
def test_w4a8_long_k_accumulates_in_fp32(path):
    """K = 14336 (Llama-3.1-8B's down_proj) with fp32 output, so accumulation error is visible:
    on Hopper the fp8 MMA's reduced-precision adder must hand over to the fp32 accumulator every
    32 products (FP8_IMPRECISE_ACC; Triton's sm90 default lets it run over all of K). Under the
    interpreter the same dataflow runs exactly (fp32 dot), checking the long K loop itself."""
    k = 14336
    cpu = DEVICE == "cpu"
    n, m = (16, 1 if path == "splitk" else 16) if cpu else (512, 3 if path == "splitk" else 200)
    qw, sc, ws2 = make_w4a8(n, k, "INT4", 128, seed=41)
    x = make_x((m, k), F32, seed=42, scale=2.0)
    in_s = (x.abs().max() / 448).reshape(())
    config = DOT(SPLIT_K=1) if cpu else None
    y = w4a8.w4a8_gemm(x, qw, sc, ws2, in_s, element="INT4", scale_kind="F32", group_size=128, path=path,
                       operand=FP8, config=config)
    ref = R.w4a8_gemm(x.cpu(), qw.cpu(), sc.cpu(), ws2.cpu(), in_s.cpu(), element="INT4", scale_kind="F32",
                      group_size=128)
    assert_rel(y.cpu(), ref, tol(F32, fp8=True))
