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
* ``"dense"`` (chosen while ``torch.compile`` traces on the CPU, or forced): every expert on every
  token, weighted by a ``[T, E]`` routing matrix that is zero off the top-k. Static shapes, no
  sync, graph-capturable; does ``E / k`` times the FLOPs.
* ``"grouped"`` (chosen by ``"auto"`` on CUDA for the formats a grouped kernel covers: 4-bit
  E2M1/E4M3 or INT4/F32 weights with bf16/fp16 or NVFP4 activations (W4A16_NVFP4, NVFP4 W4A4,
  NVFP4_AWQ, W4A16_AWQ; ``kernels/moe_w4a16.py``) and FP8 weights with 2-D block or MXFP8 scales
  (FP8_PB_WO, MXFP8; ``kernels/moe_w8a16.py``)): three grouped launches (gate, up, down; vLLM's
  ``fused_moe`` scheme: all routed (token, expert) pairs sorted by expert, one Triton kernel each),
  the activation between them in torch, the routing weights applied in the down kernel's epilogue
  and the top-k slots summed. It rounds as the loop does (routing weight on the x.dtype output,
  slots added in x.dtype in ascending expert order), so grouped and loop agree bit for bit where
  their products do. AWQ's ``pre_quant_scale`` is applied in the kernel; NVFP4 activations are
  fake-quantized per routed pair with its expert's ``input_scale`` and MXFP8 ones per row (torch /
  Triton, one pass) before the kernel. No host sync, static shapes. The experts' tensors are read
  through stacked ``[E, ...]`` *views* when the loader placed them at a constant spacing in its
  arena (the usual case: no copy); otherwise they are stacked once (a copy, logged). FP8
  per-tensor / per-channel (``_scaled_mm``), W4A8, INT8 and MXFP4 experts keep the loop. Where the
  kernel's choice is the reference (``dispatch.choose("moe_w4a16" | "moe_w8a16", ...)``: no Triton,
  old GPU, CPU), the op runs the loop reference. ``"auto"`` keeps the loop when a gradient is
  needed; forced ``"grouped"`` trains too (``motensor.autograd``: input and routing-weight
  gradients, one dense expert weight at a time).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from motensor.errors import ArgumentError, FormatError

log = logging.getLogger("motensor.models")

MODES = ("auto", "loop", "dense", "grouped")
# (dispatch family of the weights, activation quantization) the grouped kernels cover.
_GROUPED = {("w4a16", "NONE"), ("w4a16", "NVFP4"), ("w8a16", "NONE"), ("w8a16", "MXFP8")}
_PROJECTIONS = ("gate", "up", "down")


class QuantExperts(nn.Module):
    """Drop-in for a transformers-5 fused experts module, with quantized per-expert Linears.

    ``gate[e]`` and ``up[e]`` map ``[*, H] -> [*, I]``, ``down[e]`` maps ``[*, I] -> [*, H]``; each
    is a ``QuantLinear`` (or a plain ``nn.Linear`` for a projection a MIXED_PRECISION checkpoint
    left unquantized). Expert ``e`` computes ``down(act_fn(gate(x)) * up(x))``.
    """

    #: The per-expert projection lists the grouped path stacks (``FusedGateUpQuantExperts``: gate_up, down).
    _projections: tuple[str, ...] = _PROJECTIONS

    def __init__(self, gate: Sequence[nn.Module], up: Sequence[nn.Module], down: Sequence[nn.Module],
                 act_fn: Callable, *, name: str = "", mode: str = "auto"):
        super().__init__()
        label = name or "QuantExperts"
        if not (len(gate) == len(up) == len(down)) or not down:
            raise FormatError(f"{label}: {len(gate)} gate, {len(up)} up and {len(down)} down projections")
        if mode not in MODES:
            raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
        self.gate = _ExpertList(gate)
        self.up = _ExpertList(up)
        self.down = _ExpertList(down)
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
        self._stacks: Optional[dict[str, dict[str, Any]]] = None
        self._checked_versions: tuple[int, ...] = (0,) * len(self._projections)
        self._why_not: Optional[str] = self._check_grouped()

    @property
    def _grouped_why_not(self) -> Optional[str]:
        """Why the grouped path cannot run (None if it can), re-checked whenever an expert module is
        replaced (e.g. PEFT wrapping one in a LoRA layer, whose adapter the grouped kernels would skip)."""
        versions = tuple(getattr(self, proj).version for proj in self._projections)
        if versions != self._checked_versions:
            self._why_not = self._check_grouped()
            self._checked_versions = versions
            self._stacks = None
        return self._why_not

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden_dim={self.hidden_dim}, "
                f"intermediate_dim={self.intermediate_dim}, mode={self.mode}")

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.down[e](self.act_fn(self.gate[e](x)) * self.up[e](x))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        mode = self.mode
        if mode == "auto":
            mode = self._auto_mode(hidden_states)
        if mode == "grouped":
            return self._forward_grouped(hidden_states, top_k_index, top_k_weights)
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

    # -- grouped path ----------------------------------------------------------------------------
    def _check_grouped(self) -> Optional[str]:
        """Why the grouped kernel cannot run these experts (None if it can)."""
        from motensor.formats import Activation
        from motensor.nn import QuantLinear

        for proj in self._projections:
            mods = list(getattr(self, proj))
            if not all(isinstance(m, QuantLinear) for m in mods):
                return (f"some {proj} projections are not plain QuantLinears (left unquantized, or wrapped, "
                        "e.g. by a LoRA adapter, which the grouped kernels would skip)")
            first = mods[0]
            act = first.format.activation
            if (first.recipe.family, act.name) not in _GROUPED:
                return (f"{first.format.name} ({act.name} activations) has no grouped kernel; the grouped "
                        "path covers the 4-bit formats with bf16/fp16 or NVFP4 activations and the FP8 "
                        "block / MXFP8 weights")
            if first.recipe.family != self.down[0].recipe.family:  # type: ignore[union-attr]
                return "gate/up and down use different kernel families"
            if act is Activation.NVFP4 and any(m.input_scale is None for m in mods):
                return f"some {proj} projections have no input_scale"
            if any(m.format is not first.format or m.group_size != first.group_size for m in mods):
                return f"the {proj} projections mix formats or group sizes"
            if any(m.bias is not None for m in mods):
                return f"the {proj} projections have biases"
            if any((m.pre_quant_scale is None) != (first.pre_quant_scale is None) for m in mods):
                return f"only some {proj} projections have a pre_quant_scale"
        return None

    def _apply(self, fn, recurse: bool = True):
        self._stacks = None  # moved / cast: the stacked views point at the old tensors
        return super()._apply(fn, recurse)

    def _auto_mode(self, x: torch.Tensor) -> str:
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        if _tracing():
            # torch.compile / CUDA-graph capture: no dispatch call or pointer check in the traced code;
            # grouped iff an eager call already chose it (and built the stacked views).
            return "grouped" if self._stacks is not None and x.is_cuda and not needs_grad else "dense"
        if self._grouped_why_not is None and x.is_cuda and not needs_grad:
            from motensor import dispatch

            first: Any = self.down[0]
            choice = dispatch.choose(f"moe_{first.recipe.family}", device=x.device, dtype=x.dtype, M=x.shape[0],
                                     N=self.hidden_dim, K=self.intermediate_dim)
            if not choice.is_reference and first.weight.is_cuda:
                return "grouped"
        return "loop"

    def grouped_tensors(self) -> dict[str, dict[str, Any]]:
        """Per projection, the experts' tensors stacked ``[E, ...]`` as the grouped op takes them
        (views where the experts lie at a constant spacing in one storage; built once, cached)."""
        if self._grouped_why_not is not None:  # (also syncs the replacement check before caching)
            raise ArgumentError(f"{self.name or 'QuantExperts'}: no grouped tensors: {self._why_not}")
        if self._stacks is not None and (_tracing() or _stacks_current(self._stacks, self)):
            return self._stacks  # (moves and casts clear the cache: ``_apply``)
        from motensor.formats import Activation, GlobalScale
        from motensor.recipes import recipe_for

        stacks: dict[str, dict[str, Any]] = {}
        copies: list[str] = []
        for proj in self._projections:
            mods: list[Any] = list(getattr(self, proj))
            first = mods[0]
            kernel = recipe_for(first.format).kernel
            gs = None
            if first.format.global_scale is GlobalScale.MULTIPLIES:
                gs = torch.stack([m.weight_scale_2.float().reshape(()) for m in mods])
            pqs = None if first.pre_quant_scale is None else torch.stack([m.pre_quant_scale for m in mods])
            w, w_copied = stack_views([m.weight for m in mods])
            fp8_blocks = first.recipe.family == "w8a16" and kernel.scale.name == "F32"
            sc, s_copied = stack_views([m.weight_scale.reshape(m.weight_scale.shape[0], -1) if fp8_blocks
                                        else m.weight_scale for m in mods])
            copies += [f"{proj}.weight"] * w_copied + [f"{proj}.weight_scale"] * s_copied
            in_s = None
            if first.format.activation is Activation.NVFP4:
                in_s = torch.stack([m.input_scale.float().reshape(()) for m in mods])
            stacks[proj] = dict(qweight=w, scales=sc, global_scale=gs, pre_quant_scale=pqs, _input_scale=in_s,
                                _family=first.recipe.family, _activation=first.format.activation,
                                element=kernel.element.name, scale_kind=kernel.scale.name,
                                group_size=first.group_size, _ptrs=(mods[0].weight.data_ptr(), mods[-1].weight.data_ptr()))
        if copies:
            log.info("%s: grouped experts stack copies of %s (not evenly spaced in one storage)",
                     self.name or "QuantExperts", ", ".join(copies))
        self._stacks = stacks
        return stacks

    def _forward_grouped(self, hidden_states, top_k_index, top_k_weights):
        x, ids, run = self._grouped_setup(hidden_states, top_k_index)
        h = self.act_fn(run("gate", x, None)) * run("up", x, None)            # [T*k, I]
        weights = None if top_k_weights is None else top_k_weights.reshape(ids.shape)
        y = run("down", h.to(x.dtype), weights)                                 # [T*k, H], routing applied
        return self._sum_slots(y, ids, hidden_states)

    def _grouped_setup(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, Callable[..., torch.Tensor]]:
        """For a grouped forward: the input rows ``x [T, H]`` (autocast applied), the routing ids
        ``[T, k]`` and ``run(proj, inp, weights) -> [T*k, N]``, one grouped product of projection
        ``proj`` over every routed pair (``inp``: one row per token or per pair; "no expert" pairs
        come out zero; ``weights``: routing weights applied to the product in its epilogue)."""
        from motensor import ops
        from motensor.formats import Activation

        if self._grouped_why_not is not None:
            raise ArgumentError(f"{self.name or 'QuantExperts'}: moe_mode='grouped' is not available: "
                                f"{self._grouped_why_not}")

        x = hidden_states
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        x = x.reshape(-1, self.hidden_dim).contiguous()
        ids = top_k_index.reshape(x.shape[0], -1)
        st = self.grouped_tensors()

        pairs = ids.numel()
        expert_of_pair = ids.reshape(-1).clamp(0, self.num_experts - 1)  # "no expert" rows come out zero
        # The pairs sorted by expert once for gate, up and down (they route the same pairs).
        sorted_ids, expert_ids = ops.moe_align(ids, self.num_experts, st[self._projections[0]]["_family"])

        def run(proj: str, inp: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
            a = st[proj]
            if a["_family"] == "w8a16":
                if a["_activation"] is Activation.MXFP8:
                    inp = ops.mxfp8_fake_quant(inp)  # per 32-block of a row: the same for every expert
                return ops.moe_w8a16_gemm(inp, ids, weights, a["qweight"], a["scales"], a["scale_kind"],
                                          a["group_size"], sorted_ids, expert_ids)
            pqs, in_s = a["pre_quant_scale"], a["_input_scale"]
            if in_s is not None:
                # NVFP4 activations: each pair's row quantized with its expert's input_scale (after
                # its pre_quant_scale), exactly what the expert's QuantLinear does to its rows.
                if inp.shape[0] != pairs:
                    inp = inp.repeat_interleave(ids.shape[1], dim=0)
                if pqs is not None:
                    inp = inp * pqs[expert_of_pair].to(inp.dtype)
                    pqs = None
                inp = ops.nvfp4_fake_quant(inp, in_s[expert_of_pair])
            return ops.moe_w4a16_gemm(inp, ids, weights, a["qweight"], a["scales"], a["global_scale"], pqs,
                                      a["element"], a["scale_kind"], a["group_size"], sorted_ids, expert_ids)

        return x, ids, run

    def _sum_slots(self, y: torch.Tensor, ids: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """``[T*k, H]`` per-pair outputs (routing applied) -> ``[*, H]``: the top-k slots summed as
        the loop's ``index_add_`` does: in the output dtype, one rounding per add, experts in
        ascending id order (so grouped and loop give the same bits where the products agree)."""
        y = y.view(ids.shape[0], ids.shape[1], self.hidden_dim).to(hidden_states.dtype)
        order = ids.argsort(dim=1, stable=True)
        y = torch.gather(y, 1, order[:, :, None].expand_as(y))
        out = y[:, 0]
        for j in range(1, ids.shape[1]):
            out = out + y[:, j]
        return out.reshape(*hidden_states.shape[:-1], self.hidden_dim)

    def _forward_dense(self, hidden_states, top_k_index, top_k_weights):
        T = hidden_states.shape[0]
        routing = torch.zeros(T, self.num_experts + 1, dtype=top_k_weights.dtype, device=hidden_states.device)
        routing = routing.scatter_add(1, top_k_index, top_k_weights)[:, : self.num_experts]
        final = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            out = self._expert(e, hidden_states) * routing[:, e, None]
            final = final + out.to(final.dtype)
        return final


class _ExpertList(nn.ModuleList):
    """A ``ModuleList`` that counts replacements of its entries (``list[i] = m``, ``setattr``)."""

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__(modules)
        self.version = 0

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, nn.Module) and name.isdigit():
            object.__setattr__(self, "version", getattr(self, "version", 0) + 1)
        super().__setattr__(name, value)


def stack_views(ts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """``torch.stack(ts)`` without a copy when the tensors lie in one storage at a constant positive
    spacing with equal shapes and strides (per-expert tensors in the loader's arena): an
    ``as_strided`` view then. Returns (stacked, whether it had to copy)."""
    t0 = ts[0]
    same = all(t.shape == t0.shape and t.stride() == t0.stride() and t.dtype == t0.dtype and t.device == t0.device
               and t.untyped_storage().data_ptr() == t0.untyped_storage().data_ptr() for t in ts)
    if same and len(ts) > 1:
        es = t0.element_size()
        d = ts[1].data_ptr() - t0.data_ptr()
        if d > 0 and d % es == 0 and all(t.data_ptr() - t0.data_ptr() == i * d for i, t in enumerate(ts)):
            return t0.as_strided((len(ts), *t0.shape), (d // es, *t0.stride()), t0.storage_offset()), False
    if same and len(ts) == 1:
        return t0.unsqueeze(0), False
    return torch.stack(list(ts)), True


def _stacks_current(stacks: dict[str, dict[str, Any]], experts: "QuantExperts") -> bool:
    for proj in experts._projections:
        mods: Any = getattr(experts, proj)
        if stacks[proj]["_ptrs"] != (mods[0].weight.data_ptr(), mods[-1].weight.data_ptr()):
            return False
    return True


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
