"""``motensor.from_pretrained``: a ModelOpt checkpoint as a ready transformers model.

Steps (no full-precision copy of a quantized weight is ever made):

1. ``config.json`` -> the transformers config; the architecture must be one motensor supports.
2. The model is built on the **meta** device (parameters without storage).
3. ``motensor.load`` puts every checkpoint tensor on the target device (quantized modules in the
   kernel layout, everything else cast to ``dtype``).
4. Quantized Linears become ``QuantLinear`` (``motensor.replace_linears``); MoE experts become
   :class:`~motensor.models.moe.QuantExperts`; checkpoint names go through transformers'
   checkpoint renamings first (``motensor.models.naming``).
5. Every other parameter/buffer is set from the loaded tensors (no copy), tied weights are tied,
   non-persistent buffers (rotary ``inv_freq``, Gemma's ``embed_scale``...) are re-created on the
   device by the model's own ``_init_weights``, FP8 KV-cache scales are attached.
6. Anything still on the meta device is an error naming it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import torch
from torch import nn

from motensor.errors import ArgumentError, ConfigError, FormatError, MotensorError
from motensor.models import bmm_experts, kv_cache, naming
from motensor.models.moe import QuantExperts, check_supported_container, experts_act_fn
from motensor.nn.replace import set_submodule

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

    from motensor.checkpoint import Checkpoint
    from motensor.loading import LoadedCheckpoint

log = logging.getLogger("motensor.models")

# transformers class (config.json "architectures") -> what it is. Each is tested on a tiny
# checkpoint in tests/test_models.py or tests/test_models_synthetic.py. Other transformers decoders
# are tried too (with a warning): their quantized modules must be nn.Linears or experts containers.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "Llama 2 / 3.x",
    "MistralForCausalLM": "Mistral",
    "MixtralForCausalLM": "Mixtral (MoE)",
    "Qwen2ForCausalLM": "Qwen2 / Qwen2.5",
    "Qwen3ForCausalLM": "Qwen3",
    "Qwen3MoeForCausalLM": "Qwen3-MoE",
    "Phi3ForCausalLM": "Phi-3",
    "Gemma3ForCausalLM": "Gemma 3 (text)",
    "DeepseekV3ForCausalLM": "DeepSeek-V3 / R1 (MLA, routed + shared experts)",
    "Qwen2MoeForCausalLM": "Qwen2-MoE / Qwen1.5-MoE",
    "Glm4MoeForCausalLM": "GLM-4.5 / 4.6 MoE",
    "Llama4ForCausalLM": "Llama 4 text (in-place quantized 3-D experts)",
    "GptOssForCausalLM": "gpt-oss (in-place quantized experts with biases, interleaved gate/up, attention sinks)",
    # Multimodal: the text side quantized, the vision tower and projector plain (as ModelOpt exports them).
    "Gemma3ForConditionalGeneration": "Gemma 3 multimodal (SigLIP vision tower plain)",
    "Mistral3ForConditionalGeneration": "Mistral 3 / Mistral Small 3.1 multimodal (Pixtral vision tower plain)",
    "Llama4ForConditionalGeneration": "Llama 4 multimodal (vision model plain, text experts in place)",
}

_KV_ROLES = ("k_scale", "v_scale")


# Defined with the other exceptions (so it prints as motensor.errors.*); re-exported here.
from motensor.errors import UnsupportedArchitectureError  # noqa: E402


@dataclass
class ExpertContainer:
    """A fused experts module of the model that the checkpoint has per-expert tensors for."""

    #: The container in the model: the transformers module, or the QuantExperts that replaced it.
    module: nn.Module
    #: Whether the checkpoint quantizes its experts (else they are stacked into its parameters).
    quantized: bool


@dataclass
class ModelReport:
    """What :func:`from_pretrained` did (``model.motensor_report``)."""

    architecture: str
    quant_algo: Optional[str]
    quantized_linears: list[str] = field(default_factory=list)
    quantized_experts: list[str] = field(default_factory=list)
    plain_tensors: int = 0
    tied: list[str] = field(default_factory=list)
    kv_cache_scales: int = 0
    unused_tensors: list[str] = field(default_factory=list)
    load_stats: Any = None
    seconds: float = 0.0

    def module_counts(self, model: nn.Module) -> dict[str, int]:
        """Modules per format (``"NVFP4": 112``, ``"unquantized Linear": 1``...)."""
        from motensor.nn import QuantLinear

        counts: dict[str, int] = {}
        for m in model.modules():
            if isinstance(m, QuantLinear):
                key = m.format.name
            elif isinstance(m, nn.Linear):
                key = "unquantized Linear"
            else:
                continue
            counts[key] = counts.get(key, 0) + 1
        return counts


def from_pretrained(
    path: Union[str, os.PathLike],
    device: Union[str, int, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = "auto",
    *,
    device_map: Any = None,
    torch_dtype: Union[str, torch.dtype, None] = None,
    progress: bool = True,
    moe_mode: str = "auto",
    check_architecture: bool = True,
    revision: Optional[str] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    token: Union[str, bool, None] = None,
    local_files_only: bool = False,
    tp_plan: Union[str, dict, None] = None,
    **hf_kwargs: Any,
) -> "PreTrainedModel":
    """Builds the transformers model of a ModelOpt checkpoint (a directory or a Hugging Face Hub
    repo id) with motensor's quantized modules, on one device, in eval mode.

    The transformers way, ``AutoModelForCausalLM.from_pretrained(path, device_map=..., dtype=...)``
    after ``import motensor``, returns the same model; this is the short form with motensor's
    options.

    ``device`` / ``device_map``: ``"cuda"``, ``"cuda:1"``, a GPU index, ``"cpu"``, ``"auto"`` or a
    dict placing everything on one device; default: CUDA if torch sees a GPU, else the CPU.
    ``dtype`` (or ``torch_dtype``): the activation / unquantized-weight dtype, a ``torch.dtype`` or
    a name; ``"auto"`` (default) = the checkpoint's (``config.json``, bf16 for ModelOpt exports).
    ``revision``, ``cache_dir``, ``token``, ``local_files_only``: for Hub repo ids (see
    :func:`motensor.open`). ``hf_kwargs`` go to ``AutoConfig.from_pretrained`` (config overrides),
    except ``attn_implementation`` (``"sdpa"``, ``"eager"``...), which goes to the model.
    ``moe_mode`` picks the experts path (``"auto"``, ``"loop"``, ``"dense"``, ``"grouped"``; see
    ``motensor.models.moe``). Architectures outside :data:`SUPPORTED_ARCHITECTURES` (the tested
    ones) are tried with a logged warning (``check_architecture=False`` silences it): a module
    that does not fit raises :class:`~motensor.errors.FormatError` naming it. ``progress`` shows
    download and load bars.

    The model has ``config.quantization_config`` (a :class:`motensor.ModelOptConfig`),
    ``hf_quantizer``, ``is_quantized``, and ``save_pretrained`` writes a ModelOpt checkpoint.

    ``device_map`` (``"auto"`` with ``max_memory``, or ``{module: device}``) spreads the model over
    GPUs and the CPU with ``accelerate`` (``motensor.parallel.placement``).
    ``tp_plan="auto"`` (under ``torchrun``) shards the model over the ranks of the default
    ``torch.distributed`` group with the model's own transformers TP plan, each rank reading only
    its slice of every tensor (``motensor.parallel.tp``); ``device`` is then ``"cuda"`` (each rank
    on ``cuda:LOCAL_RANK``) or ``"cpu"``.

    >>> model = motensor.from_pretrained("tests/data/demo", device="cpu")
    >>> tok = motensor.load_tokenizer("tests/data/demo")
    >>> out = model.generate(**tok("And God said", return_tensors="pt"), max_new_tokens=20)
    """
    import time

    import motensor
    from motensor.args import resolve_device, resolve_dtype

    max_memory = hf_kwargs.pop("max_memory", None)
    if device_map is not None:
        from motensor.parallel import placement

        if placement.needs_placement(device_map, max_memory):  # several devices / CPU: accelerate places it
            if tp_plan is not None:
                raise ArgumentError("tp_plan= and a device_map across devices do not combine: pass one of them")
            if device is not None:
                raise ArgumentError(f"device={str(device)!r} and device_map={device_map!r}: pass one of them")
            return placement.from_pretrained_placed(
                path, device_map, max_memory, dtype=dtype, torch_dtype=torch_dtype, progress=progress,
                moe_mode=moe_mode, check_architecture=check_architecture, revision=revision, cache_dir=cache_dir,
                token=token, local_files_only=local_files_only, **hf_kwargs)
        if isinstance(device_map, str) and device_map not in placement.STRATEGIES:
            device_map = placement.single_device(device_map)  # one device, named as transformers does
    elif max_memory is not None:
        raise ArgumentError("max_memory= only applies with device_map= (\"auto\" or a {module: device} dict)")
    t0 = time.perf_counter()
    _require_transformers()
    ckpt = motensor.open(path, revision=revision, cache_dir=cache_dir, token=token,
                         local_files_only=local_files_only, progress=progress)
    dtype = resolve_dtype(dtype, torch_dtype, ckpt.config)
    # Under tp_plan, "cuda" means each rank's cuda:LOCAL_RANK (motensor.parallel.tp.setup).
    tp_device = device
    device = resolve_device(device, device_map)
    config, arch = _config(ckpt, hf_kwargs, check_architecture)
    attn = hf_kwargs.pop("attn_implementation", None)
    model = _build_on_meta(arch, config, dtype, attn)
    report = populate(model, ckpt, device=tp_device if tp_plan is not None else device, dtype=dtype,
                      progress=progress, moe_mode=moe_mode, tp_plan=tp_plan)
    model.eval()
    model.requires_grad_(False)
    _generation_config(model, ckpt.root)
    report.seconds = time.perf_counter() - t0

    from motensor.integrations.hf_quantizer import attach

    attach(model, ckpt, report)
    log.info("%s: %d quantized Linears, %d expert containers, %d plain tensors in %.2f s", report.architecture,
             len(report.quantized_linears), len(report.quantized_experts), report.plain_tensors, report.seconds)
    return model


def populate(model: "PreTrainedModel", ckpt: "Checkpoint", *, device: Any, dtype: torch.dtype,
             progress: bool = True, moe_mode: str = "auto", tp_plan: Union[str, dict, None] = None) -> ModelReport:
    """Fills a transformers model built on the meta device from ``ckpt`` (steps 3-6 above):
    motensor's loader puts every tensor on ``device``, quantized modules replace the Linears and
    expert containers, the rest is assigned without copies. Used by :func:`from_pretrained` and
    by the transformers quantizer (``AutoModelForCausalLM.from_pretrained``).

    ``tp_plan``: this rank's part only (``motensor.parallel.tp``): each rank plans and reads the
    slices of its shard, and the model's TP plan is installed on the filled model."""
    import motensor

    rename = naming.renamer(model)
    shards = None
    if tp_plan is not None:
        from motensor.parallel import tp

        ctx = tp.setup(device)
        device = ctx.device
        shards = tp.plan_shards(model, ckpt, rename, ctx, tp_plan)
    loaded = motensor.load(ckpt, device=device, dtype=dtype, progress=progress,
                           slices=shards.slices if shards else None)
    if shards is not None:
        tp.localize(loaded, shards)
    target = loaded.device  # resolved ("cuda" -> "cuda:0"), checked by the loader
    q = ckpt.quant_config
    arch = type(model).__name__
    report = ModelReport(architecture=arch, quant_algo=q.quant_algo if q else None, load_stats=loaded.stats)

    experts = _install_experts(model, loaded, rename, report, moe_mode)
    in_place = bmm_experts.install(model, loaded, rename, report, moe_mode, set_submodule)
    experts.update({name: ExpertContainer(q, quantized=True) for name, q in in_place.items()})
    _install_linears(model, loaded, rename, report, experts)
    _fill_plain(model, loaded, rename, report, experts, target)
    _tie(model, report)
    report.kv_cache_scales = kv_cache.install(model, _kv_scales(ckpt, loaded, rename, target),
                                              q.kv_cache_quant_algo if q else None,
                                              q.producer_version if q else None)
    _init_non_persistent_buffers(model, target)
    _check_complete(model, ckpt.root)
    if shards is not None:
        tp.install(model, shards)
    model.motensor_report = report
    return report


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError(
            "motensor.from_pretrained builds transformers models, and transformers is not installed: "
            "pip install 'motensor[models]'"
        ) from None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def load_tokenizer(path: Union[str, os.PathLike], **kwargs: Any):
    """The checkpoint's tokenizer (``AutoTokenizer``), from a directory or a Hub repo id.

    Raises :class:`~motensor.errors.ConfigError` when the checkpoint has no tokenizer files."""
    _require_transformers()
    from transformers import AutoTokenizer

    from motensor.hub import resolve

    hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token") if k in kwargs}
    root = resolve(path, local_files_only=kwargs.pop("local_files_only", False), **hub)
    if root.is_dir() and not any((root / f).is_file() for f in _TOKENIZER_FILES) and not any(root.glob("*.tiktoken")):
        # AutoTokenizer would build an empty tokenizer here, and generate() fail far away.
        raise ConfigError(f"{path}: this checkpoint has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); "
                          "encoding a prompt needs one: copy the original model's tokenizer files beside the "
                          "weights, or load the tokenizer from the original model")
    kwargs.setdefault("local_files_only", True)
    try:
        return AutoTokenizer.from_pretrained(os.fspath(root), **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: no usable tokenizer in this checkpoint ({type(e).__name__}: {e}); "
                          "tokenizer.json / tokenizer_config.json are needed to encode prompts") from e


# -- 1. config and architecture -----------------------------------------------------------------
def _config(ckpt: "Checkpoint", hf_kwargs: dict, check_architecture: bool):
    from transformers import AutoConfig

    raw = ckpt.config
    if raw is None:
        raise ConfigError(f"{ckpt.root}: no config.json; from_pretrained needs the model's architecture")
    archs = raw.get("architectures") or []
    if not archs:
        raise UnsupportedArchitectureError(f"{ckpt.root}/config.json names no architecture (\"architectures\" is empty)")
    arch = archs[0]
    import transformers

    if not hasattr(transformers, arch):
        raise UnsupportedArchitectureError(
            f"{ckpt.root}: architecture {arch!r} (model_type {raw.get('model_type')!r}) is not in the installed "
            f"transformers {transformers.__version__}; motensor builds the transformers class config.json names "
            f"(tested: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if check_architecture and arch not in SUPPORTED_ARCHITECTURES:
        # Generic path: any decoder whose quantized modules are nn.Linears or experts containers
        # loads; what does not fit raises naming the module.
        log.warning("%s: architecture %s is not among those motensor is tested with (%s); trying it",
                    ckpt.root, arch, ", ".join(SUPPORTED_ARCHITECTURES))
    cfg_kwargs = {k: v for k, v in hf_kwargs.items() if k != "attn_implementation"}
    config = AutoConfig.from_pretrained(os.fspath(ckpt.root), local_files_only=True, **cfg_kwargs)
    # motensor is the quantizer: transformers must not see a quantization_config it would act on.
    if hasattr(config, "quantization_config"):
        config.motensor_quantization_config = config.quantization_config
        del config.quantization_config
    return config, arch


# -- 2. the model without storage ---------------------------------------------------------------
def _build_on_meta(arch: str, config, dtype: torch.dtype, attn: Optional[str]):
    import transformers

    cls = getattr(transformers, arch)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn is not None:
        kwargs["attn_implementation"] = attn
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover
        from contextlib import nullcontext as no_init_weights
    with torch.device("meta"), no_init_weights():
        model = cls._from_config(config, **kwargs)
    return model


# -- 3/4. quantized modules ---------------------------------------------------------------------
def _renamed_modules(loaded: "LoadedCheckpoint", rename) -> dict[str, Any]:
    return {naming.rename_module(rename, n): m for n, m in loaded.modules.items()}


def _install_experts(model, loaded, rename, report: ModelReport, mode: str) -> dict[str, ExpertContainer]:
    """Replaces the fused expert containers whose experts the checkpoint quantizes by
    :class:`QuantExperts`. Returns an :class:`ExpertContainer` per container name for every
    container the checkpoint has per-expert tensors for (quantized or not)."""
    from motensor.nn import QuantLinear

    quantized: dict[str, dict[tuple[int, str], Any]] = {}
    for name, lm in _renamed_modules(loaded, rename).items():
        split = naming.split_expert_name(name)
        if split is not None:
            quantized.setdefault(split[0], {})[(split[1], split[2])] = lm
    plain: dict[str, dict[tuple[int, str], str]] = {}  # unquantized expert weights (MIXED_PRECISION, excluded)
    for tname in loaded.tensors:
        mod, _, attr = rename(tname).rpartition(".")
        split = naming.split_expert_name(mod)
        if split is not None and attr == "weight":
            plain.setdefault(split[0], {})[(split[1], split[2])] = tname
    out: dict[str, ExpertContainer] = {}
    for container_name in sorted(set(quantized) | set(plain)):
        try:
            container = model.get_submodule(container_name)
        except AttributeError:
            raise FormatError(f"checkpoint has experts under {container_name!r}, which the "
                              f"{type(model).__name__} has no module for") from None
        why = check_supported_container(container, container_name)
        if why:
            raise FormatError(why)
        parts = quantized.get(container_name)
        out[container_name] = ExpertContainer(container, quantized=bool(parts))
        if not parts:
            continue  # all unquantized: stacked into the container's own parameters by _fill_plain
        n_exp = _num_experts(container)
        extra = sorted(e for e, _ in parts if e >= n_exp)
        if extra:
            raise FormatError(f"{container_name}: checkpoint has expert {extra[0]} but the model has {n_exp} experts")
        projections: dict[str, list[nn.Module]] = {"gate": [], "up": [], "down": []}
        for e in range(n_exp):
            for role, mods in projections.items():
                lm = parts.get((e, role))
                if lm is not None:
                    mods.append(QuantLinear.from_loaded(lm))
                    continue
                tname = plain.get(container_name, {}).get((e, role))
                if tname is None:
                    raise FormatError(f"{container_name}: the checkpoint has no {role} projection for expert {e}")
                mods.append(_plain_linear(loaded.tensors[tname]))
        q = QuantExperts(projections["gate"], projections["up"], projections["down"], experts_act_fn(container),
                         name=container_name, mode=mode)
        set_submodule(model, container_name, q)
        out[container_name].module = q
        report.quantized_experts.append(container_name)
    return out


def _plain_linear(w: torch.Tensor) -> nn.Linear:
    """An unquantized expert projection (MIXED_PRECISION checkpoints) as an nn.Linear, no copy."""
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(w, requires_grad=False)
    return lin


def _in_experts(name: str, experts: dict[str, ExpertContainer]) -> bool:
    split = naming.split_expert_name(name)
    return split is not None and split[0] in experts


def _install_linears(model, loaded, rename, report: ModelReport, experts: dict[str, ExpertContainer]) -> None:
    from motensor.nn.replace import replace_linears_from

    renamed = _renamed_modules(loaded, rename)
    # Keyed by the model's (renamed) module names, which is what replace_linears_from matches;
    # in-place (BMM) expert parameters were installed with their containers.
    linear_modules = {n: m for n, m in renamed.items()
                      if not getattr(m.info, "bmm", False) and not _in_experts(n, experts)}
    report.quantized_linears = replace_linears_from(model, linear_modules)
    missing = sorted(set(linear_modules) - set(report.quantized_linears))
    if missing:
        raise FormatError(
            f"quantized checkpoint module(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} have no nn.Linear of the "
            f"same name in {type(model).__name__}"
        )


# -- 5. everything else ---------------------------------------------------------------------------
def _owner(model: nn.Module, name: str):
    parent, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(parent) if parent else model
    except AttributeError:
        return None, attr
    if attr in module._parameters or attr in module._buffers:
        return module, attr
    return None, attr


def _fill_plain(model, loaded, rename, report: ModelReport, experts: dict[str, ExpertContainer],
                device: torch.device) -> None:
    from motensor.nn import QuantLinear

    stacks: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for name, t in loaded.tensors.items():
        if name.rsplit(".", 1)[-1] in _KV_ROLES:
            continue
        target = rename(name)
        mod, _, attr = target.rpartition(".")
        split = naming.split_expert_name(mod)
        if split is not None and split[0] in experts:
            if experts[split[0]].quantized:
                continue  # taken by _install_experts
            if attr != "weight":
                raise FormatError(f"{name}: unquantized expert tensors other than weights are not supported")
            stacks.setdefault(split[0], {})[(split[1], split[2])] = t
            continue
        owner, attr = _owner(model, target)
        if owner is None or isinstance(owner, QuantLinear):
            report.unused_tensors.append(name)
            continue
        _assign(owner, attr, t, name, device)
        report.plain_tensors += 1
    for container_name, parts in stacks.items():
        _stack_experts(experts[container_name].module, container_name, parts, device)
        report.plain_tensors += len(parts)
    if report.unused_tensors:
        log.warning("%d checkpoint tensor(s) have no place in %s and were ignored: %s", len(report.unused_tensors),
                    type(model).__name__, report.unused_tensors[:8])


def _assign(owner: nn.Module, attr: str, t: torch.Tensor, name: str, device: torch.device) -> None:
    current = owner._parameters.get(attr) if attr in owner._parameters else owner._buffers.get(attr)
    if current is not None and tuple(current.shape) != tuple(t.shape):
        raise FormatError(f"{name}: checkpoint shape {list(t.shape)} but the model expects {list(current.shape)}")
    if current is not None and current.is_floating_point() and t.is_floating_point() and t.dtype != current.dtype:
        t = t.to(current.dtype)
    if t.device != device:
        t = t.to(device)
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(t, requires_grad=False)
    else:
        owner._buffers[attr] = t


def _stack_experts(container: nn.Module, name: str, parts: dict, device: torch.device) -> None:
    """Unquantized per-expert weights -> the fused container's 3-D parameters."""
    why = check_supported_container(container, name)
    if why:
        raise FormatError(why)
    n_exp = _num_experts(container)
    try:
        gate_up = torch.stack([torch.cat([parts[(e, "gate")], parts[(e, "up")]], 0) for e in range(n_exp)])
        down = torch.stack([parts[(e, "down")] for e in range(n_exp)])
    except KeyError as e:
        raise FormatError(f"{name}: the checkpoint lacks expert {e.args[0][0]}'s {e.args[0][1]} projection") from None
    _assign(container, "gate_up_proj", gate_up, f"{name}.gate_up_proj", device)
    _assign(container, "down_proj", down, f"{name}.down_proj", device)


def _num_experts(container: nn.Module) -> int:
    """Experts of a supported fused container (``gate_up_proj`` is ``[E, 2I, H]``)."""
    gate_up = container.gate_up_proj
    assert isinstance(gate_up, torch.Tensor)
    return int(gate_up.shape[0])


def _tie(model, report: ModelReport) -> None:
    """Ties what the model's config says to tie (transformers' own mapping), where it can."""
    try:
        tied = model.get_expanded_tied_weights_keys(all_submodels=True)
    except Exception:  # pragma: no cover - older transformers
        tied = {}
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if getattr(cfg, "tie_word_embeddings", False):
            tied = {"lm_head.weight": "model.embed_tokens.weight"}
    for target, source in tied.items():
        t_owner, t_attr = _owner(model, target)
        s_owner, s_attr = _owner(model, source)
        if t_owner is None or s_owner is None:
            log.info("not tying %s to %s: one of them is a quantized module", target, source)
            continue
        t_param, s_param = t_owner._parameters.get(t_attr), s_owner._parameters.get(s_attr)
        if t_param is None or s_param is None:
            continue
        t_meta, s_meta = t_param.device.type == "meta", s_param.device.type == "meta"
        if s_meta and not t_meta:  # only the target was stored: tie the other way round
            s_owner._parameters[s_attr] = t_param
        elif t_meta and not s_meta:
            t_owner._parameters[t_attr] = s_param
        elif not t_meta and not s_meta:
            if t_param is s_param or (t_param.shape == s_param.shape and torch.equal(t_param, s_param)):
                t_owner._parameters[t_attr] = s_param
            else:
                log.warning("config ties %s to %s but the checkpoint stores different values; not tying them",
                            target, source)
                continue
        else:
            continue  # both missing: reported by _check_complete
        report.tied.append(f"{target} = {source}")


def _kv_scales(ckpt, loaded, rename, device) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for kv in ckpt.kv_tensors:
        if kv["kind"] not in _KV_ROLES:
            log.warning("ignoring KV-cache tensor %s (%s): not supported", kv["tensor"], kv["kind"])
            continue
        t = loaded.tensors.get(kv["tensor"])
        if t is None:
            t = ckpt.tensor(kv["tensor"])
        attn = naming.rename_module(rename, kv["attention"])
        out.setdefault(attn, {})[kv["kind"]] = t.to(device=device, dtype=torch.float32)
    return out


def _init_non_persistent_buffers(model, device: torch.device) -> None:
    """Re-creates every non-persistent buffer (left on meta) on ``device`` with the value the
    model's ``_init_weights`` gives it (rotary ``inv_freq``, Gemma's ``embed_scale``, a vision
    tower's ``position_ids``...). Each module is initialised by the ``_init_weights`` of the
    innermost transformers model that contains it, as transformers does (a multimodal model's
    vision tower is its own ``PreTrainedModel``, e.g. SigLIP inside Gemma 3)."""
    owners: dict[int, tuple[nn.Module, nn.Module]] = {}
    recreated: list[tuple[str, nn.Module, str]] = []
    initializer = _innermost_pretrained(model)
    for module_name, module in model.named_modules():
        for attr in list(module._non_persistent_buffers_set):
            buf = module._buffers.get(attr)
            if buf is None or buf.device.type != "meta":
                continue
            new = torch.empty(buf.shape, dtype=buf.dtype, device=device)
            new.fill_(_unset(new))
            module._buffers[attr] = new
            owners[id(module)] = (module, initializer[module_name])
            recreated.append((f"{module_name}.{attr}" if module_name else attr, module, attr))
    if not recreated:
        return
    for t in list(model.parameters()) + [b for b in model.buffers() if b is not None]:
        t._is_hf_initialized = True  # transformers' init functions skip tensors flagged like this
    for _, module, attr in recreated:
        _buffer(module, attr)._is_hf_initialized = False  # type: ignore[attr-defined]
    for module, owner in owners.values():
        init: Any = owner._init_weights  # a PreTrainedModel method (nn.Module's __getattr__ types it as a Tensor)
        init(module)
    bad = [name for name, module, attr in recreated if _still_unset(_buffer(module, attr))]
    if bad:
        raise MotensorError(f"{type(model).__name__}: could not re-create non-persistent buffer(s) {bad}")


def _innermost_pretrained(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> the innermost module with ``_init_weights`` (a transformers
    ``PreTrainedModel``) that contains it (``model`` itself at the top)."""
    out: dict[str, nn.Module] = {"": model}
    for name, module in model.named_modules():
        if not name:
            continue
        parent = out[name.rpartition(".")[0]]
        out[name] = parent
        if hasattr(module, "_init_weights") and callable(module._init_weights):
            out[name] = module
    return out


def _unset(t: torch.Tensor) -> float | int | bool:
    """The placeholder a re-created buffer is filled with until ``_init_weights`` sets it."""
    if t.is_floating_point() or t.is_complex():
        return float("nan")
    if t.dtype == torch.bool:
        return False
    return int(torch.iinfo(t.dtype).min)


def _still_unset(t: torch.Tensor) -> bool:
    if t.is_floating_point() or t.is_complex():
        return bool(torch.isnan(t).any())
    if t.dtype == torch.bool or t.numel() == 0:
        return False
    return bool((t == torch.iinfo(t.dtype).min).any())


def _buffer(module: nn.Module, attr: str) -> torch.Tensor:
    buf = module._buffers[attr]
    assert buf is not None
    return buf


def _check_complete(model: nn.Module, root: Path) -> None:
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if missing:
        raise FormatError(
            f"{root}: the checkpoint has no value for {len(missing)} tensor(s) of {type(model).__name__}: "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )


def _generation_config(model, root: Path) -> None:
    if not (root / "generation_config.json").is_file():
        return
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(os.fspath(root), local_files_only=True)
    except Exception as e:  # a broken generation_config must not stop the model
        log.warning("%s: ignoring generation_config.json (%s)", root, e)

