"""Tile bookkeeping shared by motensor's GEMM kernels: which tile a program owns, its K range,
and the epilogue every kernel ends with."""
import triton
import triton.language as tl


@triton.jit
def row_offsets(rows, stride):
    """``rows * stride`` in 64 bits. In 32 bits it wraps once M * N reaches 2^31 (a 16k-token
    prefill against a 128k vocabulary), and so would M * K for the activation rows."""
    return rows.to(tl.int64) * stride


@triton.jit
def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program 0-axis id, in grouped order: GROUP_M row-blocks sweep the N tiles
    together, so weight tiles are reused from L2 (the Triton matmul tutorial's ordering)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def split_k_range(K, pid_k, SPLIT_K: tl.constexpr, BLOCK_K: tl.constexpr):
    """[k_lo, k_hi) of K split `pid_k`, aligned to BLOCK_K so every load starts on a tile."""
    k_per_split = tl.cdiv(tl.cdiv(K, SPLIT_K), BLOCK_K) * BLOCK_K
    k_lo = pid_k * k_per_split
    return k_lo, tl.minimum(k_lo + k_per_split, K)


@triton.jit
def store_tile(acc, c_ptr, b_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k,
               HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Adds the bias (once: only the first K split does) and writes the fp32 tile: a plain store
    in the output dtype, or fp32 atomics into a zeroed fp32 buffer when K is split."""
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, 1.0, 0.0) * bias[None, :]
    c_ptrs = c_ptr + row_offsets(rm, stride_cm)[:, None] + rn[None, :]
    c_mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)
    else:
        tl.atomic_add(c_ptrs, acc, mask=c_mask)
