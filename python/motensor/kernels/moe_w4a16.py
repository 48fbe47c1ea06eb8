"""Grouped routed-experts W4A16 GEMM: one launch over every (token, slot) pair, sorted by expert.

The vLLM ``fused_moe`` scheme (vllm/model_executor/layers/fused_moe/fused_moe.py) with motensor's
4-bit weights. For ``P = T * top_k`` pairs ``p = t * top_k + j`` routed to ``e = topk_ids[t, j]``:

    y[p, :] = (x[row(p)] * pre_quant_scale[e]) @ W[e]^T  (* topk_weights[p], applied to the
              product rounded to x.dtype, as transformers' experts loop multiplies its output)

``reference.moe_align_block_size`` sorts the pairs by expert and pads each expert's run to a
multiple of BLOCK_M (sentinel ``P``), so a block of BLOCK_M sorted entries has one expert
(``expert_ids[block]``). One program owns a BLOCK_M x BLOCK_N tile of one block: it gathers its
BLOCK_M activation rows (``row(p) = p // ROW_DIV``: ``ROW_DIV = top_k`` for the gate/up input
``[T, K]``, 1 for the down input ``[P, K]``), streams that expert's packed weight with the same
decode and tensor-core dot as ``w4a16._dot_kernel`` (even/odd nibbles, no interleave; scale after
the MMA when a K chunk lies inside one group, before it otherwise) and scatters the rows back to
``y[p]``. Blocks of pairs routed to no expert (``expert_ids == -1``) write zero rows.

Weights are stacked per expert: qweight uint8 [E, N, K//2], scales [E, K//G, N] (kernel layout of
``w4a16`` per expert), global_scale fp32 [E] (E4M3 scales; NVFP4), pre_quant_scale [E, K] (AWQ).
Weight-only: activations fp16/bf16/fp32 are used as they are (activation-quantized formats keep
``QuantExperts``' loop). No split-K: the block count grows with the routed pairs.

Configs are fixed per M bucket (like vLLM's defaults, not autotuned: the alignment depends on
BLOCK_M), unmeasured first choices; the interpreter uses tiny tiles.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from motensor.formats import Element, ScaleEncoding, as_enum
from motensor.kernels import _util
from motensor.kernels import reference as ref
from motensor.kernels._decode import ELEM_E2M1, E2M1_F16_FACTOR, SCALE_E4M3
from motensor.kernels._tiles import grouped_tile, row_offsets
from motensor.kernels.w4a16 import dot_main_loop


@triton.jit
def _moe_w4a16_kernel(
    x_ptr, w_ptr, s_ptr, gs_ptr, pqs_ptr, tw_ptr, c_ptr, sorted_ptr, expert_ptr,
    N, K, EM, num_pairs, stride_xm, stride_we, stride_wn, stride_se, stride_sg, stride_pe, stride_cm,
    ROW_DIV: tl.constexpr, ELEMENT: tl.constexpr, SCALE_KIND: tl.constexpr, GROUP: tl.constexpr,
    HAS_GS: tl.constexpr, HAS_PQS: tl.constexpr, MUL_ROUTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Grid (EM / BLOCK_M * cdiv(N, BLOCK_N),). sorted_ptr int32 [EM], expert_ptr int32 [EM / BLOCK_M]."""
    tl.static_assert(BLOCK_K % 32 == 0, "BLOCK_K/2 must be a multiple of 16 (MMA K)")
    pid_m, pid_n = grouped_tile(EM, N, BLOCK_M, BLOCK_N, GROUP_M)
    pair = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))     # EM is whole blocks
    mask_m = pair < num_pairs
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rn < N
    c_ptrs = c_ptr + row_offsets(pair, stride_cm)[:, None] + rn[None, :]
    c_mask = mask_m[:, None] & mask_n[None, :]
    expert = tl.load(expert_ptr + pid_m)
    if expert < 0:
        # Pairs routed to no expert (or a block past the last one, all sentinels): zero rows.
        tl.store(c_ptrs, tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty), mask=c_mask)
        return
    e = expert.to(tl.int64)
    w_base = w_ptr + e * stride_we
    s_base = s_ptr + e * stride_se
    rows = pair // ROW_DIV

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = dot_main_loop(acc, x_ptr + row_offsets(rows, stride_xm), mask_m, w_base, s_base, rn, mask_n, 0, K,
                        stride_wn, stride_sg, pqs_ptr + e * stride_pe, ELEMENT, SCALE_KIND, GROUP, HAS_PQS,
                        BLOCK_N, BLOCK_K, EVEN_K)

    if ELEMENT == ELEM_E2M1:
        if GROUP % BLOCK_K == 0 or SCALE_KIND == SCALE_E4M3:
            acc = acc * E2M1_F16_FACTOR
    if HAS_GS:
        acc = acc * tl.load(gs_ptr + e)
    if MUL_ROUTED:
        # As transformers' experts loop: the expert's output in x.dtype, times the routing weight.
        acc = acc.to(c_ptr.dtype.element_ty).to(tl.float32) * tl.load(tw_ptr + pair, mask=mask_m, other=0.0)[:, None]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


_moe = triton.heuristics({"EVEN_K": lambda a: a["K"] % a["BLOCK_K"] == 0})(_moe_w4a16_kernel)

_cfg = _util.config
# (max pairs per expert on average, config), first match wins. H100 guesses, unmeasured: a 16-row
# tile while experts see few tokens (decode), larger tiles once they see many (prefill).
CONFIGS = (
    (16, _cfg(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1)),
    (64, _cfg(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, GROUP_M=8)),
    (None, _cfg(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_stages=4)),
)
# Before sm90 (mma.sync keeps the accumulators in registers) the 64x128 tile spills with INT4 +
# pre_quant_scale (aot_check, sm80/sm89): a 64x64 tile there instead.
PRE_SM90_LARGE = _cfg(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_stages=4)
INTERP_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2)


def default_config(pairs: int, num_experts: int, capability: tuple[int, int] = (9, 0)) -> "triton.Config":
    """The launch config for ``pairs`` routed pairs over ``num_experts`` experts on ``capability``."""
    per_expert = pairs / max(num_experts, 1)
    for bound, cfg in CONFIGS:
        if bound is None or per_expert <= bound:
            return PRE_SM90_LARGE if bound is None and capability < (9, 0) else cfg
    raise AssertionError("unreachable")  # pragma: no cover


def check_stacked(qweight: torch.Tensor, scales: torch.Tensor, global_scale: Optional[torch.Tensor],
                  pre_quant_scale: Optional[torch.Tensor], scale_kind: ScaleEncoding, group_size: int) -> tuple[int, int, int]:
    """Validate the stacked 4-bit layout; returns (E, N, K)."""
    if qweight.dim() != 3 or scales.dim() != 3 or scales.shape[0] != qweight.shape[0]:
        raise ValueError(f"qweight must be [E, N, K//2] and scales [E, K//G, N], got {tuple(qweight.shape)} "
                         f"and {tuple(scales.shape)}")
    num_experts = qweight.shape[0]
    n, k = _util.check_w4_layout(qweight[0], scales[0], scale_kind, group_size)
    if global_scale is not None and global_scale.numel() != num_experts:
        raise ValueError(f"global_scale must hold one value per expert ({num_experts}), got {tuple(global_scale.shape)}")
    if pre_quant_scale is not None and tuple(pre_quant_scale.shape) != (num_experts, k):
        raise ValueError(f"pre_quant_scale must be [E, K] = [{num_experts}, {k}], got {tuple(pre_quant_scale.shape)}")
    return num_experts, n, k


def moe_w4a16_gemm(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: Optional[torch.Tensor],
                   qweight: torch.Tensor, scales: torch.Tensor, global_scale: Optional[torch.Tensor] = None, *,
                   element: Union[Element, str], scale_kind: Union[ScaleEncoding, str], group_size: int,
                   pre_quant_scale: Optional[torch.Tensor] = None,
                   config: Optional[dict] = None,
                   alignment: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Grouped routed-experts GEMM (see the module docstring); same contract as
    ``reference.moe_w4a16_gemm``. Output [T*top_k, N] in x.dtype.

    x [T, K] or [T*top_k, K] fp16/bf16/fp32; topk_ids [T, top_k] integer; topk_weights [T, top_k]
    or None; qweight uint8 [E, N, K//2]; scales [E, K//G, N]; global_scale fp32 [E] (E4M3 scales)
    or None; pre_quant_scale [E, K] or None; config: fixed meta-parameters (tests; always used
    under the interpreter, where it defaults to INTERP_CONFIG).
    """
    el = _util.w4_element(element)
    sk = as_enum(ScaleEncoding, scale_kind, "scale_kind")
    num_experts, n, k = check_stacked(qweight, scales, global_scale, pre_quant_scale, sk, group_size)
    _util.check_device(x, topk_ids, topk_weights, qweight, scales, global_scale, pre_quant_scale)
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
        cfg = default_config(pairs, num_experts, torch.cuda.get_device_capability(x.device))
        meta, warps, stages = dict(cfg.kwargs), cfg.num_warps, cfg.num_stages
    sorted_ids, expert_ids = aligned(topk_ids, num_experts, meta["BLOCK_M"], alignment)
    em = sorted_ids.numel()
    qw = qweight if qweight.stride(-1) == 1 else qweight.contiguous()
    s_arg = scales.view(torch.uint8) if sk is ScaleEncoding.E4M3 else scales
    if s_arg.stride(-1) != 1:
        s_arg = s_arg.contiguous()
    gs = None if global_scale is None else global_scale.reshape(-1).to(torch.float32).contiguous()
    pqs = None if pre_quant_scale is None else pre_quant_scale.to(x.dtype).contiguous()
    tw = None if topk_weights is None else topk_weights.reshape(-1).contiguous()
    grid = lambda m: (em // m["BLOCK_M"] * triton.cdiv(n, m["BLOCK_N"]),)
    _moe[grid](
        x_ptr=x2, w_ptr=qw, s_ptr=s_arg, gs_ptr=gs if gs is not None else s_arg,
        pqs_ptr=pqs if pqs is not None else x2, tw_ptr=tw if tw is not None else x2, c_ptr=c,
        sorted_ptr=sorted_ids, expert_ptr=expert_ids, N=n, K=k, EM=em, num_pairs=pairs,
        stride_xm=x2.stride(0), stride_we=qw.stride(0), stride_wn=qw.stride(1), stride_se=s_arg.stride(0),
        stride_sg=s_arg.stride(1), stride_pe=pqs.stride(0) if pqs is not None else 0, stride_cm=c.stride(0),
        ROW_DIV=row_div, ELEMENT=el.value, SCALE_KIND=sk.value, GROUP=group_size, HAS_GS=gs is not None,
        HAS_PQS=pqs is not None, MUL_ROUTED=tw is not None, num_warps=warps, num_stages=stages, **meta)
    return c


def block_m(pairs: int, num_experts: int, device: torch.device) -> int:
    """The BLOCK_M this module's kernel launches with for ``pairs`` routed pairs."""
    if _util.interpreting():
        return int(INTERP_CONFIG["BLOCK_M"])
    return int(default_config(pairs, num_experts, torch.cuda.get_device_capability(device)).kwargs["BLOCK_M"])


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
