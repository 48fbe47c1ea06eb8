"""FP8-weight (W8A16) Triton kernel vs the reference: FP8_PB_WO block scales and MXFP8 E8M0 scales."""
import zlib

import pytest
import torch

from kcases import DEVICE, REL_TOL, assert_rel, gen, make_x, tol
from motensor.kernels import reference as R, w8a16

DOT = lambda **kw: dict(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, GROUP_M=2), **kw)
F16, F32 = torch.float16, torch.float32


def make_w8(n, k, scale_kind, block, seed, four_d=False):
    g = gen(seed)
    w = (torch.randn(n, k, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    if scale_kind == "F32":
        s = torch.rand(-(-n // block), -(-k // block), generator=g) * 0.01 + 1e-4
        if four_d:   # the checkpoint's [N/B, 1, K/B, 1] form
            s = s[:, None, :, None]
    else:
        s = torch.randint(112, 124, (k // block, n), generator=g, dtype=torch.uint8)
    return w.to(DEVICE), s.to(DEVICE)


# (scale_kind, block, N, K, M, path, dtype, bias, config)
CASES = [
    ("F32", 128, 40, 160, 1, "splitk", F16, True, DOT(SPLIT_K=2)),       # 2 K blocks, K tail
    ("F32", 128, 40, 160, 3, "splitk", F32, False, DOT(SPLIT_K=4, BLOCK_K=64)),
    ("F32", 128, 40, 160, 17, "tiled", F16, True, DOT(BLOCK_K=128, BLOCK_N=32)),
    ("F32", 16, 40, 48, 257, "tiled", F32, True, DOT(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16)),  # 2 N blocks per tile
    ("E8M0", 32, 40, 96, 1, "splitk", F32, True, DOT(SPLIT_K=2)),              # scale after the MMA
    ("E8M0", 32, 40, 96, 5, "splitk", F16, False, DOT(SPLIT_K=2, BLOCK_K=64)),  # scale before, tail
    ("E8M0", 32, 40, 96, 17, "tiled", F32, True, DOT(BLOCK_K=64)),
]


def _id(c):
    sk, b, n, k, m, path, dt, bias, _ = c
    return f"{sk}-B{b}-N{n}-K{k}-M{m}-{path}-{str(dt)[6:]}{'-bias' if bias else ''}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_w8a16_matches_reference(case):
    sk, block, n, k, m, path, dtype, has_bias, config = case
    seed = zlib.crc32(_id(case).encode())
    w, s = make_w8(n, k, sk, block, seed, four_d=(m == 17 and sk == "F32"))
    x = make_x((m, k), dtype, seed + 1)
    bias = make_x((n,), dtype, seed + 2) if has_bias else None
    y = w8a16.w8a16_gemm(x, w, s, scale_kind=sk, block_size=block, bias=bias, path=path, config=config)
    ref = R.w8a16_gemm(x.cpu(), w.cpu(), s.cpu(), scale_kind=sk, block_size=block,
                       bias=None if bias is None else bias.cpu())
    assert_rel(y.cpu(), ref, tol(dtype))


def test_w8a16_block_k_must_divide_the_scale_block():
    w, s = make_w8(40, 160, "F32", 128, seed=3)
    x = make_x((2, 160), F16, seed=4)
    with pytest.raises(ValueError, match="BLOCK_K"):
        w8a16.w8a16_gemm(x, w, s, scale_kind="F32", block_size=128, path="splitk", config=DOT(BLOCK_K=256))


@pytest.mark.gpu
@pytest.mark.parametrize("path,m", [("splitk", 1), ("tiled", 300)])
@pytest.mark.parametrize("sk,block", [("F32", 128), ("E8M0", 32)])
def test_w8a16_bf16_gpu_autotuned(path, m, sk, block):
    w, s = make_w8(1000, 1024, sk, block, seed=5)
    x = make_x((m, 1024), torch.bfloat16, seed=6)
    y = w8a16.w8a16_gemm(x, w, s, scale_kind=sk, block_size=block, path=path)
    assert_rel(y, R.w8a16_gemm(x, w, s, scale_kind=sk, block_size=block), REL_TOL[torch.bfloat16])
