"""Grouped routed-experts W8A16 GEMM: FP8 E4M3 experts (FP8_PB_WO 2-D block scales, MXFP8 E8M0
group scales), all (token, expert) pairs in one launch, sorted by expert.

The scheme of ``moe_w4a16`` (pair alignment, one expert per BLOCK_M block, row gather, scatter
to ``y[pair]``, zero rows for the "no expert" slot, the routing weight on the x.dtype-rounded
product) with the main loop of ``w8a16`` (``w8a16.dot_main_loop``: FP8 byte decoded by bits into fp16, scale
after the MMA while a K chunk lies inside one scale block, else folded per element in fp32).

Weights stacked per expert: qweight float8_e4m3fn [E, N, K]; scales F32 [E, ceil(N/B), ceil(K/B)]
(B = block_size, 128) or E8M0 uint8 [E, K//G, N] (G = 32).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from motensor.formats import ScaleEncoding, as_enum
from motensor.kernels import _util
from motensor.kernels import reference as ref
from motensor.kernels._tiles import grouped_tile, row_offsets
from motensor.kernels.moe_w4a16 import CONFIGS as _W4_CONFIGS
from motensor.kernels.w8a16 import SCALE_E8M0_T, W8_SCALE_KINDS, dot_main_loop


@triton.jit
def _moe_w8a16_kernel(
    x_ptr, w_ptr, s_ptr, tw_ptr, c_ptr, sorted_ptr, expert_ptr,
    N, K, EM, num_pairs, stride_xm, stride_we, stride_wn, stride_se, stride_s0, stride_cm,
    ROW_DIV: tl.constexpr, SCALE_KIND: tl.constexpr, SBLOCK: tl.constexpr, MUL_ROUTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """w_ptr: the FP8 weight viewed as uint8 [E, N, K]. Grid (EM / BLOCK_M * cdiv(N, BLOCK_N),)."""
    CHUNK_IN_BLOCK: tl.constexpr = SBLOCK % BLOCK_K == 0
    tl.static_assert(CHUNK_IN_BLOCK or SCALE_KIND == SCALE_E8M0_T, "F32 block scales need BLOCK_K | block size")
    pid_m, pid_n = grouped_tile(EM, N, BLOCK_M, BLOCK_N, GROUP_M)
    pair = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    mask_m = pair < num_pairs
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    c_ptrs = c_ptr + row_offsets(pair, stride_cm)[:, None] + rn[None, :]
    c_mask = mask_m[:, None] & mask_n[None, :]
    expert = tl.load(expert_ptr + pid_m)
    if expert < 0:
        tl.store(c_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty), mask=c_mask)
        return
    e = expert.to(tl.int64)
    w_base = w_ptr + e * stride_we
    s_base = s_ptr + e * stride_se
    rows = pair // ROW_DIV
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = dot_main_loop(acc, x_ptr + row_offsets(rows, stride_xm), mask_m, w_base, s_base, rn, mask_n, 0, K,
                        stride_wn, stride_s0, SCALE_KIND, SBLOCK, BLOCK_N, BLOCK_K, EVEN_K)
    if CHUNK_IN_BLOCK:
        acc = acc * 256.0
    if MUL_ROUTED:
        acc = acc.to(c_ptr.dtype.element_ty).to(tl.float32) * tl.load(tw_ptr + pair, mask=mask_m, other=0.0)[:, None]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


_moe = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})(_moe_w8a16_kernel)

# The 4-bit kernel's tiles (unmeasured guesses); BLOCK_K <= 128, so F32 chunks stay inside a block.
CONFIGS = _W4_CONFIGS
INTERP_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2)


def _config(pairs: int, num_experts: int) -> "triton.Config":
    per_expert = pairs / max(num_experts, 1)
    return next(cfg for bound, cfg in CONFIGS if bound is None or per_expert <= bound)


def check_stacked(qweight: torch.Tensor, scales: torch.Tensor, scale_kind: ScaleEncoding,
                  block_size: int) -> tuple[int, int, int]:
    """Validate the stacked FP8 layout; returns (E, N, K)."""
    if qweight.dtype != torch.float8_e4m3fn or qweight.dim() != 3 or scales.dim() != 3 \
            or scales.shape[0] != qweight.shape[0]:
        raise ValueError(f"qweight must be float8_e4m3fn [E, N, K] and scales [E, ...] (3-D), got {qweight.dtype} "
                         f"{tuple(qweight.shape)} and {tuple(scales.shape)}")
    if scale_kind not in W8_SCALE_KINDS:
        raise ValueError(f"scale_kind must be one of {[s.name for s in W8_SCALE_KINDS]}, got {scale_kind.name}")
    e, n, k = qweight.shape
    if scale_kind is ScaleEncoding.F32:
        want = (e, triton.cdiv(n, block_size), triton.cdiv(k, block_size))
        if scales.dtype != torch.float32 or tuple(scales.shape) != want:
            raise ValueError(f"F32 block scales must be float32 {want}, got {scales.dtype} {tuple(scales.shape)}")
    elif k % block_size or scales.dtype != torch.uint8 or tuple(scales.shape) != (e, k // block_size, n):
        raise ValueError(f"E8M0 scales must be uint8 [E, K//G, N] = [{e}, {k // block_size}, {n}], "
                         f"got {scales.dtype} {tuple(scales.shape)}")
    return e, n, k


def moe_w8a16_gemm(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: Optional[torch.Tensor],
                   qweight: torch.Tensor, scales: torch.Tensor, *, scale_kind: Union[ScaleEncoding, str],
                   block_size: int, config: Optional[dict] = None,
                   alignment: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Grouped routed-experts FP8-weight GEMM; same contract as ``reference.moe_w8a16_gemm``.
    Output [T*top_k, N] in x.dtype; config: fixed meta-parameters (tests, interpreter)."""
    sk = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    num_experts, n, k = check_stacked(qweight, scales, sk, block_size)
    _util.check_device(x, topk_ids, topk_weights, qweight, scales)
    row_div = ref.moe_row_div(x, topk_ids)
    x2 = _util.flatten_rows(x, k)
    pairs = topk_ids.numel()
    c = torch.empty((pairs, n), device=x.device, dtype=x.dtype)
    if pairs == 0:
        return c
    if config is not None or _util.interpreting():
        meta = dict(config if config is not None else INTERP_CONFIG)
        warps, stages = meta.pop("num_warps", 4), meta.pop("num_stages", 1)
    else:
        cfg = _config(pairs, num_experts)
        meta, warps, stages = dict(cfg.kwargs), cfg.num_warps, cfg.num_stages
    if sk is ScaleEncoding.F32 and block_size % meta["BLOCK_K"]:
        raise ValueError(f"BLOCK_K={meta['BLOCK_K']} must divide block_size={block_size}")
    sorted_ids, expert_ids = aligned(topk_ids, num_experts, meta["BLOCK_M"], alignment)
    em = sorted_ids.numel()
    qw = qweight.view(torch.uint8)
    if qw.stride(-1) != 1:
        qw = qw.contiguous()
    sc = scales if scales.stride(-1) == 1 else scales.contiguous()
    tw = None if topk_weights is None else topk_weights.reshape(-1).contiguous()
    grid = lambda m: (em // m["BLOCK_M"] * triton.cdiv(n, m["BLOCK_N"]),)
    _moe[grid](
        x_ptr=x2, w_ptr=qw, s_ptr=sc, tw_ptr=tw if tw is not None else x2, c_ptr=c, sorted_ptr=sorted_ids,
        expert_ptr=expert_ids, N=n, K=k, EM=em, num_pairs=pairs, stride_xm=x2.stride(0), stride_we=qw.stride(0),
        stride_wn=qw.stride(1), stride_se=sc.stride(0), stride_s0=sc.stride(1), stride_cm=c.stride(0),
        ROW_DIV=row_div, SCALE_KIND=sk.value, SBLOCK=block_size, MUL_ROUTED=tw is not None,
        num_warps=warps, num_stages=stages, **meta)
    return c


def block_m(pairs: int, num_experts: int, device: torch.device) -> int:
    """The BLOCK_M this module's kernel launches with for ``pairs`` routed pairs."""
    if _util.interpreting():
        return int(INTERP_CONFIG["BLOCK_M"])
    return int(_config(pairs, num_experts).kwargs["BLOCK_M"])


def align(topk_ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of ``topk_ids`` sorted by expert and padded as the kernel's launch config needs
    (``reference.moe_align_block_size``): computed once per MoE forward and passed as
    ``alignment=`` to every projection's call (gate, up and down route the same pairs)."""
    return ref.moe_align_block_size(topk_ids, num_experts, block_m(topk_ids.numel(), num_experts, topk_ids.device))


def aligned(topk_ids: torch.Tensor, num_experts: int, bm: int,
            alignment: Optional[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``alignment`` when its shapes fit block size ``bm`` for these pairs, else a new one. It must
    have been built from the same ``topk_ids`` (``align``): checking the contents would cost a host
    sync."""
    if alignment is not None:
        sorted_ids, expert_ids = alignment
        p = topk_ids.numel()
        em = -(-(p + (num_experts + 1) * (bm - 1)) // bm) * bm
        if sorted_ids.numel() == em and expert_ids.numel() * bm == em and sorted_ids.device == topk_ids.device:
            return sorted_ids, expert_ids
    return ref.moe_align_block_size(topk_ids, num_experts, bm)
