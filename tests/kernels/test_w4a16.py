"""W4A16 Triton kernels vs the pure-torch reference (interpreter on CPU, compiled on a GPU).

Shapes are small and odd on purpose: N not a multiple of BLOCK_N, K several groups but not a
multiple of BLOCK_K, M = 1, 3, 5, 16, 17, 257. Each case names the launch config, so every kernel
branch is hit: GEMV (pair decode, E2M1/INT4 subnormal tricks, split-K atomics), dot with the scale
after the MMA (K chunk inside one group) and before it (fp16 product for E4M3, fp32 route for
E8M0/F32), split-K and direct store.
"""
import zlib

import pytest
import torch

from kcases import REL_TOL, assert_rel, make_w4, make_x, tol
from motensor.kernels import _util, reference as R, w4a16

GEMV = lambda **kw: dict(dict(BLOCK_N=16, BLOCK_KW=4, SPLIT_K=2), **kw)
DOT = lambda **kw: dict(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, GROUP_M=2), **kw)
F16, F32 = torch.float16, torch.float32

# (element, scale_kind, G, N, K, M, path, dtype, bias, config)
CASES = [
    # NVFP4 / W4A16_NVFP4: E2M1 codes, E4M3 scales x global scale, G = 16
    ("E2M1", "E4M3", 16, 40, 48, 1, "gemv", F16, True, GEMV()),
    ("E2M1", "E4M3", 16, 40, 48, 3, "gemv", F32, False, GEMV(SPLIT_K=1)),
    ("E2M1", "E4M3", 16, 40, 48, 5, "splitk", F16, True, DOT(SPLIT_K=2)),          # K tail, prescale fp16
    ("E2M1", "E4M3", 16, 40, 80, 17, "tiled", F32, True, DOT(BLOCK_K=64)),
    ("E2M1", "E4M3", 16, 24, 32, 257, "tiled", F16, False, DOT(BLOCK_M=32, GROUP_M=4)),
    # MXFP4: E2M1 codes, E8M0 scales, G = 32
    ("E2M1", "E8M0", 32, 40, 96, 3, "gemv", F16, False, GEMV(BLOCK_KW=8)),
    ("E2M1", "E8M0", 32, 40, 96, 1, "splitk", F32, True, DOT(SPLIT_K=3)),          # chunk in group
    ("E2M1", "E8M0", 32, 40, 96, 17, "tiled", F16, True, DOT(BLOCK_K=64)),         # fp32 prescale, tail
    # W4A16_AWQ: INT4 (q + 8), fp32 scales, G = 32 / 64 / 128
    ("INT4", "F32", 32, 40, 96, 1, "gemv", F32, True, GEMV()),
    ("INT4", "F32", 64, 40, 192, 4, "gemv", F16, False, GEMV(BLOCK_N=32, BLOCK_KW=8, SPLIT_K=3)),
    ("INT4", "F32", 32, 40, 96, 16, "splitk", F16, False, DOT(SPLIT_K=2)),         # chunk in group
    ("INT4", "F32", 32, 40, 96, 17, "tiled", F16, True, DOT(BLOCK_K=64)),          # prescale, tail
    ("INT4", "F32", 128, 24, 256, 3, "tiled", F32, False, DOT(BLOCK_K=64)),
    # cross combination the kernels support generically: INT4 codes with E4M3 scales
    ("INT4", "E4M3", 16, 40, 48, 5, "splitk", F32, True, DOT(SPLIT_K=2)),
    ("INT4", "E4M3", 16, 40, 48, 2, "gemv", F16, True, GEMV()),
]


def _id(c):
    el, sk, g, n, k, m, path, dt, bias, _ = c
    return f"{el}-{sk}-G{g}-N{n}-K{k}-M{m}-{path}-{str(dt)[6:]}{'-bias' if bias else ''}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_w4a16_matches_reference(case):
    el, sk, g, n, k, m, path, dtype, has_bias, config = case
    seed = zlib.crc32(_id(case).encode())
    qw, sc, gs = make_w4(n, k, el, sk, g, seed)
    x = make_x((m, k), dtype, seed + 1)
    bias = make_x((n,), dtype, seed + 2) if has_bias else None
    y = w4a16.w4a16_gemm(x, qw, sc, gs, element=el, scale_kind=sk, group_size=g, bias=bias, path=path,
                         config=config)
    ref = R.w4a16_gemm(x.cpu(), qw.cpu(), sc.cpu(), None if gs is None else gs.cpu(), element=el,
                       scale_kind=sk, group_size=g, bias=None if bias is None else bias.cpu())
    assert_rel(y.cpu(), ref, tol(dtype, mma=path != "gemv"))


def test_w4a16_default_path_and_leading_dims():
    """path=None asks dispatch (M=6 -> 'splitk'); x may have leading batch dims."""
    qw, sc, gs = make_w4(24, 64, "E2M1", "E4M3", 16, seed=7)
    x = make_x((2, 3, 64), torch.float16, seed=8)
    y = w4a16.w4a16_gemm(x, qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16)
    ref = R.w4a16_gemm(x.cpu(), qw.cpu(), sc.cpu(), gs.cpu(), element="E2M1", scale_kind="E4M3", group_size=16)
    assert y.shape == (2, 3, 24)
    assert_rel(y.cpu(), ref, REL_TOL[torch.float16])


def test_w4a16_strided_x():
    """A column slice of a wider activation (row stride != K) is read in place."""
    qw, sc, _ = make_w4(24, 64, "INT4", "F32", 32, seed=9)
    xw = make_x((3, 96), torch.float32, seed=10)
    x = xw[:, 16:80]
    y = w4a16.w4a16_gemm(x, qw, sc, element="INT4", scale_kind="F32", group_size=32, path="gemv", config=GEMV())
    ref = R.w4a16_gemm(x.cpu(), qw.cpu(), sc.cpu(), element="INT4", scale_kind="F32", group_size=32)
    assert_rel(y.cpu(), ref, REL_TOL[torch.float32])


@pytest.mark.parametrize("bad", ["scale_shape", "scale_dtype", "group", "element", "path"])
def test_w4a16_rejects_bad_arguments(bad):
    qw, sc, gs = make_w4(24, 64, "E2M1", "E4M3", 16, seed=11)
    x = make_x((1, 64), torch.float16, seed=12)
    kw = dict(element="E2M1", scale_kind="E4M3", group_size=16, path="gemv")
    if bad == "scale_shape":
        sc = sc[:, :8]
    elif bad == "scale_dtype":
        sc = sc.float()
    elif bad == "group":
        kw["group_size"] = 24
    elif bad == "element":
        kw["element"] = "NF4"
    else:
        kw["path"] = "fast"
    with pytest.raises(ValueError):
        w4a16.w4a16_gemm(x, qw, sc, gs, **kw)


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(_util, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _util.check_device(torch.zeros(1))


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["gemv", "splitk", "tiled"])
@pytest.mark.parametrize("kind", [("E2M1", "E4M3", 16), ("E2M1", "E8M0", 32), ("INT4", "F32", 128)])
def test_w4a16_bf16_gpu_autotuned(path, kind):
    """bf16 (wrong in the interpreter) through the autotuned kernels, realistic shapes."""
    el, sk, g = kind
    m = {"gemv": 1, "splitk": 9, "tiled": 300}[path]
    qw, sc, gs = make_w4(1000, 1024, el, sk, g, seed=13)
    x = make_x((m, 1024), torch.bfloat16, seed=14)
    bias = make_x((1000,), torch.bfloat16, seed=15)
    y = w4a16.w4a16_gemm(x, qw, sc, gs, element=el, scale_kind=sk, group_size=g, bias=bias, path=path)
    ref = R.w4a16_gemm(x, qw, sc, gs, element=el, scale_kind=sk, group_size=g, bias=bias)
    assert_rel(y, ref, REL_TOL[torch.bfloat16])
