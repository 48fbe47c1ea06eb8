"""Quantized MoE experts for transformers 5's fused expert containers.

transformers 5 builds Qwen3-MoE, Mixtral (and most MoE models) with one ``experts`` module
holding 3-D parameters ``gate_up_proj [E, 2I, H]`` and ``down_proj [E, H, I]``, called as
``experts(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``.
ModelOpt exports those experts split per expert (``experts.E.{gate,up,down}_proj``, Mixtral
``experts.E.{w1,w3,w2}``; FORMATS.md section 5) with one quantizer per expert and projection,
gate and up sharing theirs. :class:`QuantExperts` replaces the container and holds, per expert,
the checkpoint's ``QuantLinear``s for gate, up and down as loaded.

Gate and up are not concatenated into one module (``motensor.nn.fuse_modules`` could, exactly):
concatenation makes new tensors, while the loaded ones stay alive as views of the loader's single
device arena, so the experts' gate/up bytes (most of an MoE model) would be held twice. Two
products instead of one per expert give the same numbers (every output element is the same dot
product) for the same weight bytes read.

Two execution paths, same result up to bf16 summation order:

* ``"loop"`` (eager default): the transformers forward, expert by expert over the experts some
  token was routed to. It mirrors ModelOpt's fake-quant model (which quantizes the very
  ``F.linear`` calls of this loop) operation for operation. Data-dependent shapes and a host sync
  (``nonzero``), so not for CUDA graphs.
* ``"dense"`` (chosen while ``torch.compile`` traces, or forced): every expert on every token,
  weighted by a ``[T, E]`` routing matrix that is zero off the top-k. Static shapes, no sync,
  graph-capturable; does ``E / k`` times the FLOPs, fine for the small models it is used with in
  tests, and a stand-in until a device-indexed grouped GEMM kernel exists.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from motensor.errors import ArgumentError, FormatError

MODES = ("auto", "loop", "dense")


class QuantExperts(nn.Module):
    """Drop-in for a transformers-5 fused experts module, with quantized per-expert Linears.

    ``gate[e]`` and ``up[e]`` map ``[*, H] -> [*, I]``, ``down[e]`` maps ``[*, I] -> [*, H]``; each
    is a ``QuantLinear`` (or a plain ``nn.Linear`` for a projection a MIXED_PRECISION checkpoint
    left unquantized). Expert ``e`` computes ``down(act_fn(gate(x)) * up(x))``.
    """

    def __init__(self, gate: Sequence[nn.Module], up: Sequence[nn.Module], down: Sequence[nn.Module],
                 act_fn: Callable, *, name: str = "", mode: str = "auto"):
        super().__init__()
        label = name or "QuantExperts"
        if not (len(gate) == len(up) == len(down)) or not down:
            raise FormatError(f"{label}: {len(gate)} gate, {len(up)} up and {len(down)} down projections")
        if mode not in MODES:
            raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
        self.gate = nn.ModuleList(gate)
        self.up = nn.ModuleList(up)
        self.down = nn.ModuleList(down)
        self.act_fn = act_fn
        self.name = name
        self.mode = mode
        self.num_experts = len(down)
        first: Any = down[0]  # QuantLinear or nn.Linear
        self.hidden_dim = int(first.out_features)
        self.intermediate_dim = int(first.in_features)
        h, i = self.hidden_dim, self.intermediate_dim
        for e in range(self.num_experts):
            shapes = [(p[e].out_features, p[e].in_features) for p in (self.gate, self.up, self.down)]
            if shapes != [(i, h), (i, h), (h, i)]:
                raise FormatError(f"{label}: expert {e} has gate/up/down [N, K] = {shapes}; expected "
                                 f"{[(i, h), (i, h), (h, i)]}")

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, "
                f"intermediate_dim={self.intermediate_dim}, mode={self.mode}")

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.down[e](self.act_fn(self.gate[e](x)) * self.up[e](x))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "auto":
            mode = "dense" if _tracing() else "loop"
        if mode == "dense":
            return self._forward_dense(hidden_states, top_k_index, top_k_weights)
        return self._forward_loop(hidden_states, top_k_index, top_k_weights)

    def _forward_loop(self, hidden_states, top_k_index, top_k_weights):
        # Same operations, in the same order and dtypes, as transformers' eager experts forward.
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = torch.nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit.flatten().tolist():
            if e == self.num_experts:  # transformers' "no expert" slot (expert parallelism)
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            out = self._expert(e, hidden_states[token_idx])
            out = out * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final

    def _forward_dense(self, hidden_states, top_k_index, top_k_weights):
        T = hidden_states.shape[0]
        routing = torch.zeros(T, self.num_experts + 1, dtype=top_k_weights.dtype, device=hidden_states.device)
        routing = routing.scatter_add(1, top_k_index, top_k_weights)[:, : self.num_experts]
        final = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            out = self._expert(e, hidden_states) * routing[:, e, None]
            final = final + out.to(final.dtype)
        return final


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        if compiler.is_compiling():
            return True
    return bool(torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers-5 fused (gated) experts container: 3-D ``gate_up_proj`` and ``down_proj``."""
    gu, dn = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3 and dn.dim() == 3


def experts_act_fn(container: nn.Module) -> Callable:
    act = getattr(container, "act_fn", None)
    if act is None:
        raise FormatError(f"{type(container).__name__} has no act_fn; cannot replace it with QuantExperts")
    return act


def transposed_layout(container: nn.Module) -> bool:
    """transformers marks experts stored as [E, H, 2I] with ``is_transposed`` (GPT-OSS style)."""
    return bool(getattr(container, "is_transposed", False))


def check_supported_container(container: nn.Module, name: str) -> Optional[str]:
    """Why ``container`` cannot be replaced by :class:`QuantExperts` (None if it can)."""
    if not is_fused_experts(container):
        return f"{name} is a {type(container).__name__}, not a fused experts container"
    if transposed_layout(container):
        return f"{name} stores transposed expert weights, which motensor does not map yet"
    if getattr(container, "has_bias", False):
        return f"{name} has expert biases, which motensor does not map yet"
    if not getattr(container, "has_gate", True):
        return f"{name} has non-gated experts, which motensor does not map yet"
    return None
