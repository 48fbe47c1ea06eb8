"""Experts quantized in place as 3-D parameters (Llama 4 style "BMM" experts).

Llama 4's ``Llama4TextExperts`` holds ``gate_up_proj [E, H, 2I]`` and ``down_proj [E, I, H]`` and
multiplies them with ``torch.bmm``; ModelOpt quantizes those parameters as they are and writes
``experts.gate_up_proj`` with ``gate_up_proj_weight_scale`` / ``_weight_scale_2`` /
``_input_scale`` beside it (FORMATS.md section 5). The Rust module view describes each such
parameter as one stacked module (``ModuleInfo.bmm``) and the loader lays it out like a stack of
Linears (``[E, N, K]`` kernel layout), so here every expert's projections are plain
``QuantLinear``\\ s over slices of the loaded tensors (views, no copy, except the small group
scales of the gate/up halves, which become separate contiguous tensors).

Containers are recognised by structure: a module whose 3-D ``gate_up_proj`` / ``down_proj`` the
checkpoint stores as quantized in-place modules. What the container's forward takes decides the
wrapper: a routed call ``(hidden, top_k_index, top_k_weights)`` (transformers' fused experts) or
Llama 4's pre-routed ``(hidden [E*T, H])``, where every expert sees every token scaled by its router
score (zero for tokens not routed to it).

gpt-oss style containers (transformers' ``GptOssExperts``) differ in three ways the container itself
declares (transformers' ``use_experts_implementation`` attributes, not the class name): expert
**biases** (``has_bias``; the checkpoint's ``gate_up_proj_bias [E, 2I]`` / ``down_proj_bias [E, H]``,
plain bf16), **interleaved** gate/up columns (``is_concatenated=False``: gate = ``[..., ::2]``, up =
``[..., 1::2]``) and their **own gate** (``_apply_gate``: gpt-oss's clamped SwiGLU,
``(clamp(up) + 1) * g * sigmoid(1.702 g)``, ``g = clamp(gate, max=7)``). Such experts become
:class:`FusedGateUpQuantExperts`: one ``gate_up`` ``QuantLinear`` per expert (views of the loaded
tensors, no copy), the bias added to the product's output as ModelOpt's fake quant does
(``x @ W + b`` in the activation dtype), then the container's own ``_apply_gate`` on the fused
``[*, 2I]`` output, which splits gate and up exactly as the model defines them. Their grouped
path (NVFP4 and the other grouped formats) is two grouped products, gate_up and down, with the
biases, the gate and the routing weight applied around them in torch.
"""
from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import nn

from motensor.errors import ArgumentError, FormatError
from motensor.models.moe import MODES, QuantExperts, _ExpertList, experts_act_fn

if TYPE_CHECKING:  # pragma: no cover
    from motensor.loading import LoadedModule

log = logging.getLogger("motensor.models")

_PARAMS = ("gate_up_proj", "down_proj")


class PreRoutedQuantExperts(QuantExperts):
    """:class:`QuantExperts` called as Llama 4 calls its experts: ``forward(hidden [E*T, H])``
    with the tokens already repeated per expert and scaled by the router (``Llama4TextMoe``);
    returns ``[E*T, H]``. Expert ``e`` runs on its own ``T`` rows, as ModelOpt's fake-quant
    ``torch.bmm`` does (its input quantizers are per tensor, the same for every expert)."""

    def forward(self, hidden_states: torch.Tensor, top_k_index=None, top_k_weights=None) -> torch.Tensor:
        if top_k_index is not None:
            return super().forward(hidden_states, top_k_index, top_k_weights)
        mode = self._auto_mode(hidden_states) if self.mode == "auto" else self.mode
        if mode == "grouped":
            # Expert e owns rows [e*T, (e+1)*T): one routed pair per row, no routing weight.
            rows = hidden_states.shape[0]
            ids = torch.arange(self.num_experts, device=hidden_states.device).repeat_interleave(
                rows // self.num_experts)[:, None]
            return self._forward_grouped(hidden_states, ids, None)
        x = hidden_states.view(self.num_experts, -1, self.hidden_dim)
        out = torch.empty_like(x)
        for e in range(self.num_experts):
            out[e] = self._expert(e, x[e])
        return out.view(-1, self.hidden_dim)


class FusedGateUpQuantExperts(QuantExperts):
    """Routed quantized experts whose gate and up projections stay one product per expert:
    ``down[e](gate_fn(gate_up[e](x) + gate_up_bias[e])) + down_bias[e]`` (gpt-oss: interleaved
    gate/up columns, a clamped SwiGLU, expert biases; see the module docstring).

    ``gate_up[e]`` maps ``[*, H] -> [*, 2I]``, ``down[e]`` ``[*, I] -> [*, H]``; ``gate_fn`` maps the
    fused ``[*, 2I]`` output to ``[*, I]`` (the replaced container's ``_apply_gate``). The biases are
    plain tensors (``gate_up_proj_bias [E, 2I]``, ``down_proj_bias [E, H]``, transformers' names),
    added to the quantized product's output in the activation dtype, as ModelOpt's fake-quant
    ``x @ W + b`` does. Modes as in :class:`QuantExperts`: ``"loop"``, ``"dense"``, and
    ``"grouped"`` where the format has a grouped kernel (chosen by ``"auto"`` on CUDA through
    ``dispatch.choose``): two grouped products (the fused ``[2I, H]`` gate_up, then down) over all
    routed pairs, the pair's expert bias added to each product's output, the gate between them and
    the routing weight after the down bias in torch (the kernel's epilogue would weight the product
    before the bias), rounding as the loop does.
    """

    _projections = ("gate_up", "down")
    gate_up_proj_bias: Optional[nn.Parameter]
    down_proj_bias: Optional[nn.Parameter]

    def __init__(self, gate_up: Sequence[nn.Module], down: Sequence[nn.Module], gate_fn: Callable, *,
                 gate_up_bias: Optional[torch.Tensor] = None, down_bias: Optional[torch.Tensor] = None,
                 name: str = "", mode: str = "auto"):
        nn.Module.__init__(self)  # not QuantExperts.__init__: no separate gate / up projections
        label = name or "FusedGateUpQuantExperts"
        if len(gate_up) != len(down) or not down:
            raise FormatError(f"{label}: {len(gate_up)} gate_up and {len(down)} down projections")
        if mode not in MODES:
            raise ArgumentError(f"mode must be one of {MODES}, got {mode!r}")
        self.gate_up = _ExpertList(gate_up)
        self.down = _ExpertList(down)
        self.gate_fn = gate_fn
        self.name = name
        self.mode = mode
        self.num_experts = len(down)
        first: Any = down[0]
        self.hidden_dim = int(first.out_features)
        self.intermediate_dim = int(first.in_features)
        h, i = self.hidden_dim, self.intermediate_dim
        for e in range(self.num_experts):
            shapes = [(p[e].out_features, p[e].in_features) for p in (self.gate_up, self.down)]
            if shapes != [(2 * i, h), (h, i)]:
                raise FormatError(f"{label}: expert {e} has gate_up/down [N, K] = {shapes}; expected "
                                  f"{[(2 * i, h), (h, i)]}")
        for bname, b, width in (("gate_up_proj_bias", gate_up_bias, 2 * i), ("down_proj_bias", down_bias, h)):
            if b is not None and tuple(b.shape) != (self.num_experts, width):
                raise FormatError(f"{label}: {bname} is {list(b.shape)}, expected {[self.num_experts, width]}")
            self.register_parameter(bname, None if b is None else nn.Parameter(b, requires_grad=False))
        self._stacks = None
        self._checked_versions = (0,) * len(self._projections)
        self._why_not = self._check_grouped()

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gu = self.gate_up[e](x)
        if self.gate_up_proj_bias is not None:
            gu = gu + self.gate_up_proj_bias[e]
        y = self.down[e](self.gate_fn(gu))
        if self.down_proj_bias is not None:
            y = y + self.down_proj_bias[e]
        return y

    def _forward_grouped(self, hidden_states, top_k_index, top_k_weights):
        x, ids, run = self._grouped_setup(hidden_states, top_k_index)
        flat = ids.reshape(-1)
        expert = flat.clamp(0, self.num_experts - 1)
        gu = run("gate_up", x, None)                                            # [T*k, 2I]
        if self.gate_up_proj_bias is not None:
            gu = gu + self.gate_up_proj_bias[expert]
        y = run("down", self.gate_fn(gu).to(x.dtype), None)                    # [T*k, H]
        if self.down_proj_bias is not None:
            y = y + self.down_proj_bias[expert]
        if top_k_weights is not None:
            y = y * top_k_weights.reshape(-1, 1)
        # Pairs routed to transformers' "no expert" slot contribute nothing (the loop skips them).
        y = torch.where(((flat >= 0) & (flat < self.num_experts))[:, None], y, torch.zeros_like(y))
        return self._sum_slots(y, ids, hidden_states)


def split_stacked(lm: "LoadedModule", rows: slice | None = None, skip: tuple[str, ...] = ()) -> list[nn.Module]:
    """One ``QuantLinear`` per expert of a stacked loaded module (kernel layout ``[E, N, ...]``),
    optionally only output rows ``rows`` of each; tensors of the roles in ``skip`` are left out."""
    from motensor.nn import QuantLinear

    info = lm.info
    if len(info.lead) != 1:
        raise FormatError(f"{info.name}: expected one expert dim before [N, K], got lead {list(info.lead)}")
    n_out = info.n if rows is None else len(range(*rows.indices(info.n)))
    out: list[nn.Module] = []
    for e in range(info.lead[0]):
        tensors: dict[str, torch.Tensor] = {}
        for role, t in lm.tensors.items():
            if role in skip:
                continue
            if t.dim() == 0:
                tensors[role] = t  # per-tensor: shared by every expert
                continue
            te = t[e] if t.shape[0] == info.lead[0] and t.dim() >= 1 else t
            if rows is not None:
                if role == "weight":
                    te = te[rows]
                elif role == "weight_scale" and te.dim() == 2 and te.shape[-1] == info.n:
                    te = te[:, rows].contiguous()  # transposed group scales [K/G, N]
                elif te.dim() >= 1 and te.shape[-1] == info.n:
                    te = te[..., rows].contiguous()  # per-output scales / bias
            tensors[role] = te
        out.append(QuantLinear.from_tensors(info.format, info.k, n_out, tensors, info.group_size,
                                            name=f"{info.name}[{e}]"))
    return out


def _takes_routing(container: nn.Module) -> bool:
    try:
        params = inspect.signature(type(container).forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return True
    return len([p for p in params if p != "self"]) >= 3


def _default_gate() -> Optional[Callable]:
    """transformers' default ``_apply_gate`` (``act_fn(gate) * up`` over concatenated halves)."""
    try:
        from transformers.integrations.moe import _default_apply_gate
    except ImportError:  # pragma: no cover - transformers without the experts interface
        return None
    return _default_apply_gate


def _fused_gate_up_reason(container: nn.Module, gu: "LoadedModule", dn: "LoadedModule") -> Optional[str]:
    """Why these experts need one fused gate/up product (None if gate and up split into two
    Linears): biases (in the checkpoint or declared by the container), interleaved gate/up columns
    (``is_concatenated=False``) or a gate of the model's own (``_apply_gate`` other than
    transformers' default)."""
    why = []
    if "bias" in gu.tensors or "bias" in dn.tensors or getattr(container, "has_bias", False):
        why.append("biases")
    if not getattr(container, "is_concatenated", True):
        why.append("interleaved gate/up columns")
    own = getattr(type(container), "_apply_gate", None)
    if own is not None and own is not _default_gate():
        why.append("their own gate function")
    return " and ".join(why) or None


def _gate_fn(container: nn.Module) -> Callable:
    """The container's ``_apply_gate`` ([*, 2I] -> [*, I]); else ``act_fn(gate) * up`` over the
    concatenated (or, with ``is_concatenated=False``, interleaved) halves."""
    own = getattr(container, "_apply_gate", None)
    if own is not None:
        return own
    act = experts_act_fn(container)
    if getattr(container, "is_concatenated", True):
        return lambda gu: act(gu[..., : gu.shape[-1] // 2]) * gu[..., gu.shape[-1] // 2:]
    return lambda gu: act(gu[..., ::2]) * gu[..., 1::2]


def _bias(lm: "LoadedModule", container: nn.Module, attr: str, cname: str) -> Optional[torch.Tensor]:
    """The checkpoint's expert bias ``[E, N]`` of a stacked module (None if it has none); a container
    that declares biases the checkpoint lacks is an error naming it."""
    b = lm.tensors.get("bias")
    if b is None and isinstance(getattr(container, attr, None), torch.Tensor):
        raise FormatError(f"{cname}: the model has {attr} but the checkpoint stores no bias for {lm.info.name}")
    return b


def install(model: nn.Module, loaded, rename, report, mode: str, set_submodule) -> dict[str, nn.Module]:
    """Replaces every experts container whose 3-D parameters the checkpoint quantizes in place.
    Returns ``{container name: the quantized experts module installed there}``."""
    from motensor.models.naming import rename_module

    found: dict[str, dict[str, Any]] = {}
    for name, lm in loaded.modules.items():
        if not getattr(lm.info, "bmm", False):
            continue
        target = rename_module(rename, name)
        owner, _, param = target.rpartition(".")
        if param not in _PARAMS:
            raise FormatError(f"{name}: an in-place quantized 3-D parameter motensor cannot place (only "
                              f"experts' {' and '.join(_PARAMS)} are known)")
        found.setdefault(owner, {})[param] = lm
    out: dict[str, nn.Module] = {}
    for cname, parts in sorted(found.items()):
        try:
            container = model.get_submodule(cname)
        except AttributeError:
            raise FormatError(f"checkpoint has quantized experts {sorted(parts)} under {cname!r}, which "
                              f"{type(model).__name__} has no module for") from None
        missing = [p for p in _PARAMS if p not in parts]
        if missing:
            raise FormatError(f"{cname}: the checkpoint quantizes {sorted(parts)} in place but not {missing}")
        gu, dn = parts["gate_up_proj"], parts["down_proj"]
        E, I2, H = gu.info.lead[0], gu.info.n, gu.info.k
        if I2 % 2 or dn.info.k != I2 // 2 or dn.info.n != H or dn.info.lead != gu.info.lead:
            raise FormatError(f"{cname}: gate_up_proj {list(gu.info.lead)}x[{I2}, {H}] and down_proj "
                              f"{list(dn.info.lead)}x[{dn.info.n}, {dn.info.k}] do not form gated experts")
        cur = getattr(container, "gate_up_proj", None)
        if isinstance(cur, torch.Tensor) and cur.shape[0] != E:
            raise FormatError(f"{cname}: checkpoint has {E} experts, the model {cur.shape[0]}")
        fused = _fused_gate_up_reason(container, gu, dn)
        if fused is not None:
            if not _takes_routing(container):
                raise FormatError(f"{cname}: pre-routed experts with {fused} are not supported")
            q: QuantExperts = FusedGateUpQuantExperts(
                split_stacked(gu, skip=("bias",)), split_stacked(dn, skip=("bias",)), _gate_fn(container),
                gate_up_bias=_bias(gu, container, "gate_up_proj_bias", cname),
                down_bias=_bias(dn, container, "down_proj_bias", cname), name=cname, mode=mode)
        else:
            inter = I2 // 2
            gate = split_stacked(gu, slice(0, inter))
            up = split_stacked(gu, slice(inter, I2))
            down = split_stacked(dn)
            cls = QuantExperts if _takes_routing(container) else PreRoutedQuantExperts
            q = cls(gate, up, down, experts_act_fn(container), name=cname, mode=mode)
        set_submodule(model, cname, q)
        out[cname] = q
        report.quantized_experts.append(cname)
        log.debug("%s: %d in-place quantized experts -> %s", cname, E, type(q).__name__)
    return out
