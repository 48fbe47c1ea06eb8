"""Tensor parallelism on ``torch.distributed``: the model's own transformers TP plan, applied to
motensor's quantized modules, each rank reading only its slice of every tensor.

Under ``torchrun --nproc-per-node N`` every rank runs the same ``from_pretrained(...,
tp_plan="auto")``. The steps, in the order ``motensor.models.pretrained`` calls them:

1. :func:`setup` joins (or starts) the default process group (NCCL on CUDA, gloo on the CPU) and
   makes a 1-D ``DeviceMesh`` over all ranks.
2. :func:`plan_shards` matches every checkpoint module to the model's plan
   (``model.tp_plan``: ``config.base_model_tp_plan`` plus the model class's own entries) and
   turns the styles it shards into per-tensor slices ``(axis, start, len)`` of the *stored*
   tensors: column-parallel (``colwise``; MoE ``packed_colwise`` gate/up) splits the output
   features N, so packed weights, group/block scales, per-channel scales and biases are cut along
   N; row-parallel (``rowwise``; MoE ``down_proj``) splits the input features K at group/block
   boundaries, so weights and scales are cut along K and ``pre_quant_scale`` with them.
   Per-tensor scalars (``weight_scale_2``, static ``input_scale``) are replicated. A split that
   would cut a packed byte, a scale group or block, or an attention head is refused, naming the
   module. The meta model's Linears are resized to the rank's shard.
3. ``motensor.load(..., slices=...)``: the Rust plan reads only those bytes of each file and
   re-lays them out exactly as it does whole tensors (``rust/core/src/plan.rs``, ``Slice`` /
   ``Window``).
4. :func:`install` hooks the sharded modules with transformers' own parallel styles
   (``ColwiseParallel``, ``RowwiseParallel``, ``MoeExpertsParallel`` from
   ``transformers.distributed.tensor_parallel``): replicated input -> local output shard for
   column-parallel, an all-reduce (sum) after row-parallel, one all-reduce per MoE experts block.
   Row-parallel quantized modules whose activation scale is computed from the whole input (FP8
   per token, dynamic per-tensor FP8) all-reduce the amax first, so every rank quantizes with
   the global scale, as the single-process model does.

``AutoModelForCausalLM.from_pretrained(path, tp_plan="auto")`` takes the same steps from motensor's
transformers quantizer (:func:`plan_of_distributed_config` reads transformers' ``DistributedConfig``).
Expert parallelism (transformers' ``ep_plan``: ``ep_dispatch_experts`` / ``grouped_gemm``) is refused;
the experts are tensor-parallel (``moe_tp_experts``).

Everything the plan does not shard this way is replicated on every rank: embeddings, norms and
``lm_head`` (``embedding_rowwise`` / ``colwise_gather_output`` in the plan; the quantized bytes
that matter are the decoder's Linears), and any module of a style motensor does not map.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from motensor.errors import ArgumentError, ConfigError, FormatError
from motensor.formats import Activation

if TYPE_CHECKING:  # pragma: no cover
    from motensor.checkpoint import Checkpoint, ModuleInfo
    from motensor.loading import LoadedCheckpoint

log = logging.getLogger("motensor.parallel")

#: Plan styles motensor shards, and how: "col" splits N (output), "row" splits K (input).
_LINEAR_STYLES = {"colwise": "col", "rowwise": "row"}
#: Styles also applied to unquantized Linears (``lm_head``: each rank computes its slice of the
#: vocabulary, transformers all-gathers them).
_PLAIN_STYLES = {**_LINEAR_STYLES, "colwise_gather_output": "col"}
#: Styles of MoE expert parameters (per-expert Linears inside the container).
_EXPERT_STYLES = {"packed_colwise": "col", "colwise": "col", "rowwise": "row"}
_EXPERT_ROLE_PARAM = {"gate": "gate_up_proj", "up": "gate_up_proj", "down": "down_proj"}
#: transformers' expert-parallel styles (its ``ep_plan``): whole experts per rank, refused.
_EP_STYLES = ("grouped_gemm", "ep_dispatch_experts")


@dataclass(frozen=True)
class TPContext:
    """One rank's view of the tensor-parallel group."""

    mesh: Any  # torch.distributed.device_mesh.DeviceMesh
    rank: int
    world: int
    device: torch.device

    @property
    def group(self):
        return self.mesh.get_group()

    def __repr__(self) -> str:
        return f"TPContext(rank={self.rank}, world={self.world}, device={self.device})"


@dataclass
class ShardPlan:
    """What :func:`plan_shards` decided for this rank."""

    ctx: TPContext
    #: checkpoint tensor name -> (axis, start, len) of the stored tensor this rank reads.
    slices: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: checkpoint module name -> ("col" | "row", local N, local K).
    modules: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    #: model module name -> style to install ("colwise", "rowwise", "moe_tp_experts").
    hooks: dict[str, str] = field(default_factory=dict)
    #: checkpoint tensors this rank drops after loading (row-parallel biases off rank 0).
    drop: set[str] = field(default_factory=set)
    #: model module names of the plan left replicated, with why.
    replicated: dict[str, str] = field(default_factory=dict)


# -- 1. process group and mesh -----------------------------------------------------------------
def setup(device: Union[str, torch.device, None] = None) -> TPContext:
    """Joins the ``torch.distributed`` group torchrun describes (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...), starting it if nobody has (NCCL for CUDA, gloo for the CPU), and
    returns this rank's context with a 1-D device mesh over every rank.

    ``device``: ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``) or ``"cpu"``; by default CUDA if
    available.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_available():
        raise ArgumentError("tp_plan= needs torch.distributed, which this torch build lacks")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ArgumentError(f"tp_plan= runs on CUDA (NCCL) or the CPU (gloo), not on {dev}")
    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ArgumentError("tp_plan= needs a torch.distributed launch: run under `torchrun --nproc-per-node N` "
                                "(or initialize the default process group yourself)")
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    mesh = init_device_mesh(dev.type, (world,))
    return TPContext(mesh=mesh, rank=rank, world=world, device=dev)


# -- 2. which tensor slices this rank reads ----------------------------------------------------
def model_plan(model: nn.Module, tp_plan: Union[str, Mapping[str, str]]) -> dict[str, str]:
    """The plan to apply: the model's own (``"auto"``) or an explicit ``{pattern: style}``."""
    if isinstance(tp_plan, Mapping):
        return dict(tp_plan)
    if tp_plan != "auto":
        raise ArgumentError(f"tp_plan must be 'auto' or a dict of module pattern -> style, not {tp_plan!r}")
    plan = dict(getattr(model, "tp_plan", None) or getattr(model, "_tp_plan", None) or {})
    if not plan:
        raise ConfigError(f"{type(model).__name__} has no tensor-parallel plan in transformers "
                          "(config.base_model_tp_plan is empty); pass tp_plan={pattern: style}")
    return plan


def plan_of_distributed_config(model: nn.Module, config: Any) -> Union[str, dict[str, str], None]:
    """The ``tp_plan`` motensor applies for transformers' own distributed arguments
    (``from_pretrained(..., tp_plan="auto")``, ``tp_size=N`` or ``distributed_config=DistributedConfig(...)``,
    which transformers turns into ``config.distributed_config``); ``None`` when they ask for no
    tensor parallelism.

    motensor shards quantized models with tensor parallelism over all the ranks; the other
    dimensions transformers offers (pipeline, FSDP / HSDP, expert parallelism with ``ep_size``) are
    refused with an :class:`ArgumentError`. A dict ``tp_plan`` overrides rules of the model's own
    plan, as in transformers.
    """
    if config is None:
        return None
    ep = getattr(config, "ep_size", 1) or 1
    if ep > 1:
        raise ArgumentError(
            f"{type(model).__name__}: expert parallelism (ep_size={ep}, transformers' ep_plan: ep_dispatch_experts / "
            "grouped_gemm) is not supported for ModelOpt checkpoints: motensor's quantized experts are sharded by "
            "tensor parallelism instead (moe_tp_experts: every rank holds its slice of every expert). Drop ep_size "
            "(and enable_expert_parallel) and pass tp_plan=\"auto\"")
    others = {name: getattr(config, name, 1) or 1 for name in ("pp_size", "fsdp_size", "dp_replicate_size")}
    if any(v > 1 for v in others.values()):
        shown = ", ".join(f"{k}={v}" for k, v in others.items() if v > 1)
        raise ArgumentError(f"{type(model).__name__}: {shown}: motensor shards ModelOpt checkpoints with tensor "
                            "parallelism over all the ranks only (tp_plan=\"auto\"); pipeline and FSDP are not "
                            "supported for them")
    if (getattr(config, "tp_size", 1) or 1) <= 1:
        return None
    plan = getattr(config, "tp_plan", None)
    if plan is None or plan == "auto":
        return "auto"
    if isinstance(plan, Mapping):
        if not plan:
            raise ArgumentError(f"{type(model).__name__}: tp_plan={{}} applies no tensor-parallel rule, but tp_size="
                                f"{config.tp_size} asks for tensor parallelism; pass tp_plan=\"auto\"")
        return {**model_plan(model, "auto"), **plan}
    raise ArgumentError(f"tp_plan must be 'auto' or a dict of module pattern -> style, not {plan!r}")


def _wildcard(name: str) -> str:
    # transformers writes layer indices as "*" in its plans (replace_layer_number_by_wildcard).
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def style_of(plan: Mapping[str, str], name: str) -> Optional[str]:
    """The plan's style for module/parameter ``name`` (exact or with layer numbers as ``*``)."""
    if name in plan:
        return plan[name]
    w = _wildcard(name)
    if w in plan:
        return plan[w]
    # Plans on a base model are written without its prefix ("layers.*..." for "model.layers.*...").
    parts = w.split(".")
    for i in range(1, len(parts)):
        tail = ".".join(parts[i:])
        if tail in plan:
            return plan[tail]
    return None


def plan_shards(model: nn.Module, ckpt: "Checkpoint", rename: Callable[[str], str], ctx: TPContext,
                tp_plan: Union[str, Mapping[str, str]] = "auto") -> ShardPlan:
    """Decides this rank's slice of every checkpoint tensor from the model's TP plan, and resizes
    the (meta) model's sharded Linears to it. See the module docstring."""
    from motensor.models import naming

    plan = model_plan(model, tp_plan)
    out = ShardPlan(ctx=ctx)
    if ctx.world == 1:
        return out
    _check_heads(model, ctx.world)
    shapes = _ShapeLookup(ckpt)

    # Quantized modules (and per-expert projections) from the checkpoint.
    for cname, info in ckpt.modules.items():
        mname = naming.rename_module(rename, cname)
        split = naming.split_expert_name(mname)
        if split is not None:
            container, _, role = split
            style = style_of(plan, f"{container}.{_EXPERT_ROLE_PARAM[role]}")
            container_style = style_of(plan, container)
            if style in _EP_STYLES or container_style in _EP_STYLES:
                raise ArgumentError(
                    f"{container}: expert-parallel styles ({style!r} / {container_style!r}: each rank holding whole "
                    "experts) are not supported for ModelOpt checkpoints; motensor shards every expert across the "
                    "ranks with the model's tensor-parallel plan (moe_tp_experts, packed_colwise gate/up, rowwise "
                    "down): pass tp_plan=\"auto\"")
            kind = _EXPERT_STYLES.get(style or "")
            if kind is None:
                out.replicated.setdefault(container, f"experts style {style!r}")
                continue
            if container_style == "moe_tp_experts":
                out.hooks[container] = "moe_tp_experts"
            else:
                out.replicated.setdefault(container, "no moe_tp_experts entry for the container")
                continue
        else:
            style = style_of(plan, mname)
            kind = _LINEAR_STYLES.get(style or "")
            if kind is None:
                if style is not None:
                    out.replicated[mname] = f"style {style!r}"
                continue
            out.hooks[mname] = style  # type: ignore[assignment]
        n, k = _module_slices(info, kind, ctx, shapes, out)
        out.modules[cname] = (kind, n, k)
        if split is None:
            _resize_linear(model, mname, kind, n, k, drop_bias=kind == "row" and ctx.rank != 0)

    # Unquantized Linears the plan shards (bf16 checkpoints, excluded layers): plain slices.
    quantized = {naming.rename_module(rename, c) for c in ckpt.modules}
    plain_by_module: dict[str, dict[str, str]] = {}
    for t in ckpt.plain_tensors:
        mod, _, attr = rename(t).rpartition(".")
        plain_by_module.setdefault(mod, {})[attr] = t
    for mname, module in model.named_modules():
        if not isinstance(module, nn.Linear) or mname in quantized:
            continue
        style = style_of(plan, mname)
        kind = _PLAIN_STYLES.get(style or "")
        tensors = plain_by_module.get(mname, {})
        if kind is None or "weight" not in tensors:
            if style is not None and kind is None:
                out.replicated[mname] = f"style {style!r}"
            continue
        n, k = module.out_features, module.in_features
        total = n if kind == "col" else k
        start, part = _even_split(mname, total, ctx, "N" if kind == "col" else "K")
        w = tensors["weight"]
        out.slices[w] = (0, start, part) if kind == "col" else (1, start, part)
        if "bias" in tensors and kind == "col":
            out.slices[tensors["bias"]] = (0, start, part)
        n, k = (part, k) if kind == "col" else (n, part)
        _resize_linear(model, mname, kind, n, k, drop_bias=False, keep_features=True)
        out.hooks[mname] = style  # type: ignore[assignment]
    return out


class _ShapeLookup(dict):
    """Stored tensor shapes, read from the checkpoint's headers on first use."""

    def __init__(self, ckpt: "Checkpoint"):
        super().__init__()
        self._ckpt = ckpt

    def __missing__(self, name: str) -> list[int]:
        shape = list(self._ckpt.tensor_info(name).shape)
        self[name] = shape
        return shape


def _even_split(module: str, total: int, ctx: TPContext, axis: str, multiple: int = 1) -> tuple[int, int]:
    part = total // ctx.world
    if total % ctx.world or part % multiple:
        unit = f" (a multiple of {multiple}: packing, scale groups or blocks)" if multiple > 1 else ""
        raise FormatError(
            f"{module}: cannot split {axis}={total} over {ctx.world} tensor-parallel ranks: each rank's share must be "
            f"a whole number of columns{unit}; {total} / {ctx.world} = {total / ctx.world:g}. Use a tp size that "
            f"divides it that way"
        )
    return ctx.rank * part, part


def _module_slices(info: "ModuleInfo", kind: str, ctx: TPContext, shapes: Mapping[str, list[int]],
                   out: ShardPlan) -> tuple[int, int]:
    """Slices of one quantized module's stored tensors for this rank; returns local (N, K)."""
    n, k = info.n, info.k
    total = n if kind == "col" else k
    # Each stored tensor's last two axes are (N / pN, K / pK): pN, pK are its packing or its
    # group/block size along that axis. The split must not cut a packed byte, group or block.
    multiple = 1
    cuts: list[tuple[str, str, int]] = []  # (role, tensor, stored axis)
    for role, t in info.tensors.items():
        shape = shapes[t]
        numel = math.prod(shape) if shape else 1
        lead = len(info.lead)
        tail = shape[lead:]
        if numel == 1 or not tail:
            continue  # per-tensor scalar: replicated
        if role == "bias":
            if kind == "col":
                cuts.append((role, t, len(shape) - 1))
            elif ctx.rank != 0:
                out.drop.add(t)  # added once, by rank 0, before the all-reduce sums the shares
            continue
        if role in ("pre_quant_scale", "input_scale") and len(tail) == 1:
            if tail[0] != k:
                raise FormatError(f"{info.name}: {role} {t} has shape {shape}, expected [{k}]")
            if kind == "row":
                cuts.append((role, t, len(shape) - 1))
            continue
        if len(tail) == 1:  # per-output-channel vector [N]
            if kind == "col":
                cuts.append((role, t, len(shape) - 1))
            continue
        dim = tail[-2] if kind == "col" else tail[-1]
        if dim == 1:
            continue  # broadcast along the split axis ([N, 1] per-channel scale, row split)
        if total % dim:
            raise FormatError(f"{info.name}: {role} {t} of shape {shape} does not tile "
                              f"{'N' if kind == 'col' else 'K'}={total}; cannot shard it")
        multiple = math.lcm(multiple, total // dim)
        cuts.append((role, t, len(shape) - 2 if kind == "col" else len(shape) - 1))
    # Activation quantization blocks along K (NVFP4 16, MX 32) must not straddle two ranks.
    if kind == "row" and info.format.activation in (Activation.NVFP4, Activation.MXFP4, Activation.MXFP8) and info.group_size:
        multiple = math.lcm(multiple, info.group_size)
    start, part = _even_split(f"{info.name} ({info.format.name})", total, ctx, "N" if kind == "col" else "K", multiple)
    for _role, t, axis in cuts:
        shape = shapes[t]
        p = total // shape[axis]
        out.slices[t] = (axis, start // p, part // p)
    return (part, k) if kind == "col" else (n, part)


def _resize_linear(model: nn.Module, name: str, kind: str, n: int, k: int, drop_bias: bool,
                   keep_features: bool = False) -> None:
    """Gives the meta model's Linear its shard's shape (it is replaced or filled afterwards).
    ``keep_features``: a plain Linear keeps the full ``in/out_features`` (transformers' styles
    read them as the global sizes); a quantized one is replaced by a module of the shard's."""
    try:
        lin = model.get_submodule(name)
    except AttributeError:
        return
    if not isinstance(lin, nn.Linear):
        return
    dtype = lin.weight.dtype
    if not keep_features:
        lin.in_features, lin.out_features = k, n
    lin.weight = nn.Parameter(torch.empty(n, k, dtype=dtype, device="meta"), requires_grad=False)
    if lin.bias is not None:
        if drop_bias:
            lin.register_parameter("bias", None)
        elif kind == "col":
            lin.bias = nn.Parameter(torch.empty(n, dtype=dtype, device="meta"), requires_grad=False)


def _check_heads(model: Any, world: int) -> None:  # a transformers PreTrainedModel
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attr in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(cfg, attr, None)
        if isinstance(heads, int) and heads % world:
            raise FormatError(f"{type(model).__name__}: {attr}={heads} is not divisible by the {world} tensor-parallel "
                              "ranks; attention heads cannot be split across them")


def localize(loaded: "LoadedCheckpoint", shards: ShardPlan) -> None:
    """After a sliced load: gives each module's info its shard's (N, K) and drops what this rank
    must not hold (row-parallel biases off rank 0)."""
    for cname, (_, n, k) in shards.modules.items():
        lm = loaded.modules.get(cname)
        if lm is None:
            continue
        lm.info = dataclasses.replace(lm.info, n=n, k=k)
        for role, t in list(lm.info.tensors.items()):
            if t in shards.drop:
                lm.tensors.pop(role, None)
    for t in shards.drop:
        loaded.tensors.pop(t, None)


# -- 4. forwards -------------------------------------------------------------------------------
def install(model: Any, shards: ShardPlan) -> None:  # a transformers PreTrainedModel
    """Hooks every sharded module with transformers' parallel style for it (see module docstring)."""
    model._motensor_shards = shards
    if shards.ctx.world == 1:
        return
    from transformers.distributed.tensor_parallel import ALL_PARALLEL_STYLES

    from motensor.nn import QuantLinear

    mesh = shards.ctx.mesh
    for name, style_name in shards.hooks.items():
        module: Any = model.get_submodule(name)
        # motensor modules (and plain Linears at inference) run on local shards, never DTensors.
        module._hf_quantized_needs_local_tp = True
        if style_name == "moe_tp_experts":
            for e in range(getattr(module, "num_experts", 0)):
                for proj in (module.down[e],):
                    if isinstance(proj, QuantLinear):
                        _global_activation_scales(proj, shards.ctx)
        elif style_name == "rowwise" and isinstance(module, QuantLinear):
            _global_activation_scales(module, shards.ctx)
        ALL_PARALLEL_STYLES[style_name].install_forward(module, mesh)
        module._is_hooked = True
    model._motensor_tp = shards.ctx
    model._tp_size = shards.ctx.world
    model._device_mesh = mesh


def _global_activation_scales(module: Any, ctx: TPContext) -> None:  # a QuantLinear
    """Row-parallel modules see a K-slice of the input: activation scales computed from the whole
    input (per-token FP8, dynamic per-tensor FP8) must use the global amax (an all-reduce MAX)."""
    from motensor.kernels import reference as ref

    spec = module.format
    group = ctx.group
    if spec.activation is Activation.FP8_PER_TOKEN:
        def forward(x: torch.Tensor, _m=module) -> torch.Tensor:
            return _fp8_per_token_global(_m, x, group)
        module.forward = forward
    elif spec.activation is Activation.FP8_PER_TENSOR and module.input_scale is None:
        inner = module.forward

        def forward_dyn(x: torch.Tensor, _m=module, _inner=inner) -> torch.Tensor:
            amax = x.detach().float().abs().amax().reshape(1)
            torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX, group=group)
            _m.input_scale = (amax / ref.FP8_MAX).reshape(())
            try:
                return _inner(x)
            finally:
                _m.input_scale = None
        module.forward = forward_dyn


def _fp8_per_token_global(m, x: torch.Tensor, group) -> torch.Tensor:
    """``fp8_linear`` with per-token scales from the whole row (all ranks' K-slices)."""
    from motensor.kernels import reference as ref

    lead = x.shape[:-1]
    xf = x.reshape(-1, m.in_features).float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX, group=group)
    s = amax / ref.FP8_MAX
    xq = torch.where(s == 0, torch.zeros_like(xf), ref.round_e4m3(xf / torch.where(s == 0, torch.ones_like(s), s)))
    sw = m.weight_scale.float()
    sw = sw.reshape(()) if sw.numel() == 1 else sw
    y = (xq @ m.weight.float().t()) * (s * sw)
    if m.bias is not None:
        y = y + m.bias.float()
    return y.to(x.dtype).reshape(*lead, m.out_features)


def holds_bytes(model: nn.Module) -> int:
    """Bytes of quantized-module tensors this rank holds (weights and scales)."""
    from motensor.nn import QuantLinear

    seen: set[int] = set()
    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            for b in m.buffers(recurse=False):
                if b is not None and id(b) not in seen:
                    seen.add(id(b))
                    total += b.numel() * b.element_size()
    return total
