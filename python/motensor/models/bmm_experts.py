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
"""
from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from motensor.errors import FormatError
from motensor.models.moe import QuantExperts, experts_act_fn

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


def split_stacked(lm: "LoadedModule", rows: slice | None = None) -> list[nn.Module]:
    """One ``QuantLinear`` per expert of a stacked loaded module (kernel layout ``[E, N, ...]``),
    optionally only output rows ``rows`` of each."""
    from motensor.nn import QuantLinear

    info = lm.info
    if len(info.lead) != 1:
        raise FormatError(f"{info.name}: expected one expert dim before [N, K], got lead {list(info.lead)}")
    n_out = info.n if rows is None else len(range(*rows.indices(info.n)))
    out: list[nn.Module] = []
    for e in range(info.lead[0]):
        tensors: dict[str, torch.Tensor] = {}
        for role, t in lm.tensors.items():
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
        if getattr(container, "has_bias", False) or hasattr(container, "gate_up_proj_bias"):
            raise FormatError(f"{cname}: in-place quantized experts with biases (gpt-oss style) are not supported yet")
        gu, dn = parts["gate_up_proj"], parts["down_proj"]
        E, I2, H = gu.info.lead[0], gu.info.n, gu.info.k
        if I2 % 2 or dn.info.k != I2 // 2 or dn.info.n != H or dn.info.lead != gu.info.lead:
            raise FormatError(f"{cname}: gate_up_proj {list(gu.info.lead)}x[{I2}, {H}] and down_proj "
                              f"{list(dn.info.lead)}x[{dn.info.n}, {dn.info.k}] do not form gated experts")
        cur = getattr(container, "gate_up_proj", None)
        if isinstance(cur, torch.Tensor) and cur.shape[0] != E:
            raise FormatError(f"{cname}: checkpoint has {E} experts, the model {cur.shape[0]}")
        inter = I2 // 2
        gate = split_stacked(gu, slice(0, inter))
        up = split_stacked(gu, slice(inter, I2))
        down = split_stacked(dn)
        cls = QuantExperts if _takes_routing(container) else PreRoutedQuantExperts
        q = cls(gate, up, down, experts_act_fn(container), name=cname, mode=mode)
        set_submodule(model, cname, q)
        out[cname] = q
        report.quantized_experts.append(cname)
        log.debug("%s: %d in-place quantized experts -> %s", cname, E, cls.__name__)
    return out
