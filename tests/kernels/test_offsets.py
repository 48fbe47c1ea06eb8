"""64-bit row offsets (kernels/_tiles.row_offsets): `row * stride` past 2^31 elements.

A 16k-token prefill against a 128k vocabulary has M * N >= 2^31 output elements; 32-bit offset
arithmetic wraps there and the kernel writes to the wrong place. The address math is checked in
the interpreter (the helper's values, and that plain int32 would wrap), every kernel's IR is
checked to use it (tests/kernels/test_aot.py), and on a GPU a real >2^31-element output is written.
"""
import pytest
import torch
import triton
import triton.language as tl

from kcases import DEVICE, assert_rel, make_w4, make_x, tol
from motensor.kernels import reference as R, w4a16
from motensor.kernels._tiles import row_offsets


@triton.jit
def _offsets(rows_ptr, wide_ptr, narrow_ptr, stride, N: tl.constexpr):
    r = tl.arange(0, N)
    rows = tl.load(rows_ptr + r)
    tl.store(wide_ptr + r, row_offsets(rows, stride))
    tl.store(narrow_ptr + r, rows * stride)


def test_row_offsets_are_64_bit():
    rows = torch.tensor([0, 1, 16383, 16384, 65535, 131071, 2**20, 2**24], dtype=torch.int32)
    stride = 128256                                    # Llama-3 vocabulary: output row stride
    wide = torch.empty(8, dtype=torch.int64)
    narrow = torch.empty(8, dtype=torch.int32)
    rows_d, wide_d, narrow_d = rows.to(DEVICE), wide.to(DEVICE), narrow.to(DEVICE)
    _offsets[(1,)](rows_d, wide_d, narrow_d, stride, N=8)
    want = rows.long() * stride
    assert torch.equal(wide_d.cpu(), want)
    assert (want > 2**31).any() and not torch.equal(narrow_d.cpu().long(), want), "int32 would wrap"


@pytest.mark.gpu
def test_w4a16_output_past_2_to_31_elements_gpu():
    """M * N = 16400 * 131072 > 2^31 output elements (4.3 GB bf16): the last rows land right."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 << 30:
        pytest.skip("needs 12 GiB of free GPU memory")
    m, n, k = 16400, 131072, 256
    qw, sc, gs = make_w4(n, k, "E2M1", "E4M3", 16, seed=51)
    x = make_x((m, k), torch.bfloat16, seed=52)
    y = w4a16.w4a16_gemm(x, qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16, path="tiled")
    assert y.shape == (m, n)
    for rows in (slice(0, 4), slice(m - 4, m)):
        ref = R.w4a16_gemm(x[rows], qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16)
        assert_rel(y[rows], ref, tol(torch.bfloat16))
    del y
    torch.cuda.empty_cache()
