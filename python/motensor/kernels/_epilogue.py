"""The epilogue every motensor GEMM kernel ends with."""
import triton
import triton.language as tl


@triton.jit
def store_tile(acc, c_ptr, b_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k,
               HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Adds the bias (once: only the first K split does) and writes the fp32 tile: a plain store
    in the output dtype, or fp32 atomics into a zeroed fp32 buffer when K is split."""
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :]
    c_mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.atomic_add(c_ptrs, acc, mask=c_mask)
