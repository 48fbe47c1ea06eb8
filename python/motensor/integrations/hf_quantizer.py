"""transformers' front door: ``AutoModelForCausalLM.from_pretrained`` on ModelOpt checkpoints.

``import motensor`` registers :class:`ModelOptConfig` and :class:`ModelOptHfQuantizer` for
``quantization_config.quant_method == "modelopt"`` (transformers' public plug-in point,
``register_quantization_config`` / ``register_quantizer``). From then on::

    model = AutoModelForCausalLM.from_pretrained("nvidia/Llama-3.1-8B-Instruct-FP8", device_map="cuda")

returns the model ``motensor.from_pretrained`` returns. How the quantizer keeps motensor's loader
(Rust fill, pinned staging, overlapped copies) instead of transformers' per-tensor path:

1. transformers builds the model on the meta device and calls ``preprocess_model``;
2. there, :func:`motensor.models.pretrained.populate` loads the whole checkpoint with
   ``motensor.load`` and installs it (``QuantLinear``, ``QuantExperts``, plain tensors, KV scales);
3. the model's ``state_dict`` is hidden from transformers' weight loop until ``postprocess_model``,
   so transformers reads no tensor a second time (its loop sees every checkpoint key as one it
   has no parameter for, and the quantizer tells it to ignore those keys); it then only re-creates
   the non-persistent buffers (rotary ``inv_freq``...) as it does for every model.

Tensor parallelism: under ``torchrun``, ``from_pretrained(path, tp_plan="auto")`` (or ``tp_size=N``,
``distributed_config=DistributedConfig(...)``) makes transformers start the process group, pick each
rank's device and put its ``DistributedConfig`` on the config; step 2 then loads only this rank's
shard (``populate(..., tp_plan=...)``, :mod:`motensor.parallel.tp`), and transformers is kept from
applying the plan a second time (:meth:`ModelOptHfQuantizer._take_over_tensor_parallelism`). The
model is the one ``motensor.from_pretrained(path, tp_plan="auto")`` builds.

Checkpoints whose ``config.json`` has no ``quantization_config`` (ModelOpt before 0.31; many NVIDIA
Hub releases) are not recognisable by transformers; pass
``quantization_config=motensor.ModelOptConfig()`` (or use ``motensor.from_pretrained``, which reads
``hf_quant_config.json`` by itself).

Saving: ``save_pretrained`` (and so ``push_to_hub``) writes a ModelOpt unified checkpoint (see
:func:`checkpoint_state_dict`): every tensor under its original name, layout and bytes,
``hf_quant_config.json`` and ``config.json``'s ``quantization_config``, sharded with an index above
``max_shard_size``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from motensor.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel

    from motensor.checkpoint import Checkpoint
    from motensor.models.pretrained import ModelReport

log = logging.getLogger("motensor.models")

QUANT_METHOD = "modelopt"
HF_QUANT_CONFIG = "hf_quant_config.json"
#: Options of motensor's loader carried by the config object; never written to config.json.
_RUNTIME_OPTIONS = ("moe_mode", "progress")


class ModelOptConfig(QuantizationConfigMixin):
    """transformers' quantization config for ModelOpt checkpoints (``quant_method: "modelopt"``).

    Holds ``config.json``'s ``quantization_config`` as ModelOpt wrote it (``quant_algo``,
    ``ignore``, ``kv_cache_scheme``, ``producer``, ``quantized_layers``...): ``to_dict()`` gives
    it back unchanged, so a saved model's config.json reads as the original. ``moe_mode`` and
    ``progress`` are options of motensor's loader (see ``motensor.from_pretrained``).

    Pass one explicitly for checkpoints whose config.json has no ``quantization_config``::

        AutoModelForCausalLM.from_pretrained(path, quantization_config=motensor.ModelOptConfig())
    """

    def __init__(self, quant_algo: Optional[str] = None, *, moe_mode: str = "auto", progress: bool = True,
                 **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.quant_algo = quant_algo
        kwargs.pop("quant_method", None)
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.moe_mode = moe_mode
        self.progress = progress
        # hf_quant_config.json's content, when the checkpoint has one (written back on save).
        self._hf_quant_config: Optional[dict] = None

    @classmethod
    def from_checkpoint(cls, ckpt: "Checkpoint", **options: Any) -> "ModelOptConfig":
        """The config of an opened checkpoint: config.json's ``quantization_config`` if it has a
        ModelOpt one, else the same form built from ``hf_quant_config.json``."""
        raw = (ckpt.config or {}).get("quantization_config")
        if not isinstance(raw, dict) or raw.get("quant_method") != QUANT_METHOD:
            raw = _config_json_form(ckpt)
        cfg = cls(**{**raw, **options})
        cfg._hf_quant_config = _read_json(ckpt.root / HF_QUANT_CONFIG)
        return cfg

    def get_loading_attributes(self) -> dict[str, Any]:
        """What a ``quantization_config=`` passed to ``from_pretrained`` overrides in the
        checkpoint's (transformers' loading attributes): motensor's loader options only."""
        return {k: getattr(self, k) for k in _RUNTIME_OPTIONS}

    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
               if not k.startswith("_") and k not in _RUNTIME_OPTIONS and v is not None}
        out["quant_method"] = QUANT_METHOD
        return out

    def __repr__(self) -> str:
        return f"ModelOptConfig({json.dumps(self.to_dict(), sort_keys=True)[:300]})"


class ModelOptHfQuantizer(HfQuantizer):
    """Loads ModelOpt checkpoints into transformers models with motensor's loader and modules.

    Everything happens before transformers' weight loop (``preprocess_model``): see the module
    docstring. The model lands on the one device ``device_map`` names (default, as in
    transformers: the CPU); several devices belong to the multi-device work
    (``motensor.args.parse_device_map``).
    """

    requires_calibration = False  # pre-quantized by definition; also accepted when transformers says not
    quantization_config: ModelOptConfig

    def __init__(self, quantization_config: QuantizationConfigMixin, **kwargs: Any):
        if not isinstance(quantization_config, ModelOptConfig):
            quantization_config = ModelOptConfig(**quantization_config.to_dict())
        super().__init__(quantization_config, **kwargs)
        # An explicit quantization_config= on a checkpoint whose config.json has none arrives with
        # pre_quantized=False; a ModelOpt checkpoint is quantized all the same.
        self.pre_quantized = True
        self.device: Optional[torch.device] = None
        self.checkpoint: Optional["Checkpoint"] = None
        self._dtype: Optional[torch.dtype] = None
        self._hidden: dict[str, Any] = {}
        self._non_persistent: list = []
        self._hidden_tp: dict[str, Any] = {}

    # -- arguments --------------------------------------------------------------------------------
    def validate_environment(self, device_map=None, **kwargs: Any) -> None:
        from motensor.args import parse_device_map

        parse_device_map(device_map)  # refuses several devices before anything is built

    def update_device_map(self, device_map):
        from motensor.args import parse_device_map

        dev = parse_device_map(device_map)
        self.device = dev if dev is not None else torch.device("cpu")
        # One device for the whole model: transformers then neither infers a map nor dispatches.
        return None if device_map is None else {"": self.device}

    def update_dtype(self, dtype):
        return dtype

    # -- loading ----------------------------------------------------------------------------------
    def preprocess_model(self, model: "PreTrainedModel", dtype=None, **kwargs: Any):
        self._dtype = dtype  # transformers passes the resolved dtype here only
        return super().preprocess_model(model, dtype=dtype, **kwargs)

    def _process_model_before_weight_loading(self, model: "PreTrainedModel", checkpoint_files=None, **kwargs: Any):
        import motensor
        from motensor.args import FALLBACK_DTYPE
        from motensor.hub import fetch_companion
        from motensor.models.pretrained import populate
        from motensor.parallel.tp import plan_of_distributed_config

        root = _checkpoint_root(checkpoint_files)
        fetch_companion(root, HF_QUANT_CONFIG)  # a Hub snapshot of an old export: transformers skips it
        ckpt = motensor.open(root)
        if ckpt.quant_config is None:
            raise ConfigError(f"{root}: quantization_config names quant_method 'modelopt' but the checkpoint has no "
                              f"ModelOpt quantization metadata ({HF_QUANT_CONFIG} or config.json)")
        self.checkpoint = ckpt
        if self.quantization_config._hf_quant_config is None:
            self.quantization_config._hf_quant_config = _read_json(ckpt.root / HF_QUANT_CONFIG)
        dtype = self._dtype if self._dtype in (torch.bfloat16, torch.float16, torch.float32) else FALLBACK_DTYPE
        device = self.device or torch.device("cpu")
        # from_pretrained(tp_plan=..., tp_size=..., distributed_config=...): transformers has made
        # the process group and put its DistributedConfig on the config; motensor shards the model.
        tp_plan = plan_of_distributed_config(model, getattr(model.config, "distributed_config", None))
        # transformers calls this inside its torch.device("meta") context: tensors made while
        # installing (rotary buffers, stacked experts) must be real, and every torch call through
        # that mode costs time (~5% of a 1B load on the CPU).
        with _outside_function_modes(device):
            report = populate(model, ckpt, device=device, dtype=dtype, progress=self.quantization_config.progress,
                              moe_mode=self.quantization_config.moe_mode, tp_plan=tp_plan)
        if tp_plan is not None:
            self._take_over_tensor_parallelism(model)
        _mark_initialized(model)
        _drop_untieable(model)
        # transformers re-creates every non-persistent buffer after its loop (empty, then its own
        # init); motensor's (KV-cache scales, rotary tables) are put back afterwards.
        self._non_persistent = [(module, attr, module._buffers[attr]) for module in model.modules()
                                for attr in module._non_persistent_buffers_set
                                if module._buffers.get(attr) is not None]
        self._hide_state_dict(model)
        model.motensor_report = report
        return model

    def _process_model_after_weight_loading(self, model: "PreTrainedModel", **kwargs: Any):
        self._restore_state_dict(model)
        self._restore_tensor_parallelism(model)
        for module, attr, value in self._non_persistent:
            module._buffers[attr] = value
        self._non_persistent = []
        model.requires_grad_(False)
        if self.checkpoint is not None:
            _attach_saving(model, self.checkpoint)
        return model

    def _take_over_tensor_parallelism(self, model) -> None:
        """populate() has sharded and hooked motensor's modules with the model's TP plan. After
        preprocess_model transformers applies the plan itself (``maybe_distribute_model``: every
        planned parameter made a DTensor shard of what it takes for the whole tensor, every planned
        module hooked): done twice, the shards would be cut again and the collectives run twice.
        Until loading is over, the model's plan resolution hands transformers empty plans (it still
        records the mesh and ``tp_size``), and its plan is hidden from the loop's TP report (the
        state dict it checks is hidden too)."""
        self._hidden_tp = {"tp_plan": model.__dict__.get("_tp_plan")}
        object.__setattr__(model, "_resolve_parallel_plans", lambda distributed_config: ({}, {}, {}))
        object.__setattr__(model, "_tp_plan", {})

    def _restore_tensor_parallelism(self, model) -> None:
        if not getattr(self, "_hidden_tp", None):
            return
        model.__dict__.pop("_resolve_parallel_plans", None)
        object.__setattr__(model, "_tp_plan", self._hidden_tp["tp_plan"])
        tp = getattr(model, "_motensor_tp", None)
        if tp is not None:  # transformers recorded its own (pp, fsdp, tp) mesh; the hooks run on motensor's
            model._device_mesh = tp.mesh
        self._hidden_tp = {}

    def _hide_state_dict(self, model) -> None:
        """Everything is loaded: transformers' loop must find no parameter to read a checkpoint
        key into (an empty state_dict), and must not report the keys it then skips."""
        self._hidden = {"state_dict": model.__dict__.get("state_dict"),
                        "ignore": model.__dict__.get("_keys_to_ignore_on_load_unexpected")}
        object.__setattr__(model, "state_dict", lambda *a, **k: {})
        object.__setattr__(model, "_keys_to_ignore_on_load_unexpected", {r"^"})

    def _restore_state_dict(self, model) -> None:
        for attr, key in (("state_dict", "state_dict"), ("_keys_to_ignore_on_load_unexpected", "ignore")):
            model.__dict__.pop(attr, None)
            if self._hidden.get(key) is not None:
                object.__setattr__(model, attr, self._hidden[key])

    # -- what the model can do --------------------------------------------------------------------
    def is_serializable(self, safe_serialization: Optional[bool] = None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        """Whether PEFT / Trainer may train adapters on this model: the quantized weights stay
        frozen, every motensor op on the forward path has a backward (``motensor.autograd``)."""
        from motensor import autograd

        return autograd.TRAINABLE

    @property
    def is_qat_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True  # motensor's ops are torch.library custom ops; generate's auto-compile is tested

    def get_state_dict_and_metadata(self, model):
        return checkpoint_state_dict(model), {}


# -- motensor.from_pretrained's models get the same attributes ----------------------------------------
def attach(model: "PreTrainedModel", ckpt: "Checkpoint", report: Optional["ModelReport"] = None) -> None:
    """Gives a model built by ``motensor.from_pretrained`` what transformers' quantizer path gives
    its models: ``config.quantization_config``, ``hf_quantizer``, ``is_quantized`` and a
    ``save_pretrained`` that writes a ModelOpt checkpoint. An unquantized checkpoint stays a plain
    transformers model (nothing to attach)."""
    if ckpt.quant_config is None:
        return
    cfg = ModelOptConfig.from_checkpoint(ckpt)
    quantizer = ModelOptHfQuantizer(cfg, pre_quantized=True)
    quantizer.checkpoint = ckpt
    quantizer.device = _model_device(model)
    model.config.quantization_config = cfg
    if hasattr(model.config, "motensor_quantization_config"):
        del model.config.motensor_quantization_config
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    for m in model.modules():
        if hasattr(m, "config") and hasattr(m.config, "_is_quantized"):
            m.config._is_quantized = True
    _attach_saving(model, ckpt)


def _model_device(model) -> Optional[torch.device]:
    for t in model.parameters():
        return t.device
    return None


# -- saving -------------------------------------------------------------------------------------------
def checkpoint_state_dict(model: "PreTrainedModel") -> dict[str, torch.Tensor]:
    """The model as a ModelOpt checkpoint state dict: every tensor of the source checkpoint under
    its original name, dtype, shape and layout.

    Unquantized tensors (embeddings, norms, excluded layers) are taken from the model as it is now
    (so edits to them are saved), cast back to the checkpoint's dtype; quantized modules' tensors
    and KV-cache scales are the checkpoint's own bytes (motensor keeps them in the kernel layout
    and never changes them, so the source bytes are what the model computes with)."""
    from motensor.models import naming
    from motensor.models.pretrained import _owner

    ckpt = getattr(model, "motensor_checkpoint", None)
    if ckpt is None:
        raise ConfigError(f"{type(model).__name__} was not loaded from a ModelOpt checkpoint by motensor; "
                          "nothing to save it as")
    rename = naming.renamer(model)
    plain = set(ckpt.plain_tensors)
    out: dict[str, torch.Tensor] = {}
    for name in ckpt.tensor_names():
        info = ckpt.tensor_info(name)
        live = None
        if name in plain:
            owner, attr = _owner(model, rename(name))
            if owner is not None:
                current = getattr(owner, attr)
                if (current is not None and tuple(current.shape) == info.shape and current.is_floating_point()
                        and info.torch_dtype.is_floating_point):
                    live = current.detach().to(device="cpu", dtype=info.torch_dtype, copy=True)
        out[name] = live if live is not None else ckpt.tensor(name)
    return out


def hf_quant_config_of(model: "PreTrainedModel") -> dict:
    """``hf_quant_config.json`` for a model: the source checkpoint's, else one built from the
    parsed quantization metadata."""
    cfg = model.config.quantization_config
    if isinstance(cfg, ModelOptConfig) and cfg._hf_quant_config is not None:
        return cfg._hf_quant_config
    return _hf_quant_config_form(model.motensor_checkpoint)


def _attach_saving(model, ckpt: "Checkpoint") -> None:
    """``save_pretrained`` writes ``hf_quant_config.json`` too (transformers writes the rest)."""
    object.__setattr__(model, "motensor_checkpoint", ckpt)
    # The state dict is already in checkpoint names: nothing for transformers to rename back.
    model._weight_conversions = []
    cls_save = type(model).save_pretrained
    ref = weakref.ref(model)  # no reference cycle: the model is freed as soon as the user drops it

    def save_pretrained(save_directory, *args: Any, push_to_hub: bool = False, **kwargs: Any):
        model = ref()
        if model is None:  # pragma: no cover - a bound method outliving its model
            raise ReferenceError("the model of this save_pretrained no longer exists")
        hub_keys = ("repo_id", "commit_message", "private", "create_pr", "token", "revision")
        hub_kwargs = {k: kwargs.pop(k) for k in hub_keys if k in kwargs}
        if "token" in hub_kwargs:
            kwargs["token"] = hub_kwargs["token"]
        result = cls_save(model, save_directory, *args, **kwargs)
        path = Path(save_directory) / HF_QUANT_CONFIG
        path.write_text(json.dumps(hf_quant_config_of(model), indent=4) + "\n")
        if push_to_hub:
            repo_id = hub_kwargs.pop("repo_id", os.fspath(save_directory).rstrip(os.sep).split(os.sep)[-1])
            model.push_to_hub(repo_id, max_shard_size=kwargs.get("max_shard_size", "50GB"), **hub_kwargs)
        return result

    save_pretrained.__doc__ = cls_save.__doc__
    object.__setattr__(model, "save_pretrained", save_pretrained)


# -- helpers ------------------------------------------------------------------------------------------
def _checkpoint_root(checkpoint_files) -> Path:
    if not checkpoint_files:
        raise ConfigError("transformers found no checkpoint files to load the ModelOpt checkpoint from")
    first = Path(checkpoint_files[0])
    if first.suffix != ".safetensors":
        raise ConfigError(f"{first}: ModelOpt checkpoints are safetensors; motensor cannot load {first.name}")
    return first.parent


def _read_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_bytes())
    except ValueError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None


def _hf_quant_config_form(ckpt: "Checkpoint") -> dict:
    """``hf_quant_config.json`` (ModelOpt's ``{"producer", "quantization"}``) from parsed metadata."""
    q = ckpt.quant_config
    if q is None:
        raise ConfigError(f"{ckpt.root}: no ModelOpt quantization metadata")
    quant: dict[str, Any] = {"quant_algo": q.quant_algo, "kv_cache_quant_algo": q.kv_cache_quant_algo}
    if q.group_size:
        quant["group_size"] = q.group_size
    if q.quantized_layers:
        quant["quantized_layers"] = {k: dict(v) for k, v in q.quantized_layers.items()}
    quant["exclude_modules"] = list(q.exclude_modules)
    return {"producer": {"name": "modelopt", "version": q.producer_version or "unknown"}, "quantization": quant}


def _config_json_form(ckpt: "Checkpoint") -> dict:
    """config.json's ``quantization_config`` (ModelOpt >= 0.31 form) from parsed metadata."""
    q = ckpt.quant_config
    if q is None:
        raise ConfigError(f"{ckpt.root}: no ModelOpt quantization metadata")
    out: dict[str, Any] = {"quant_algo": q.quant_algo, "ignore": list(q.exclude_modules),
                           "producer": {"name": "modelopt", "version": q.producer_version or "unknown"}}
    if q.kv_cache_quant_algo:
        out["kv_cache_quant_algo"] = q.kv_cache_quant_algo
    if q.group_size:
        out["group_size"] = q.group_size
    if q.quantized_layers:
        out["quantized_layers"] = {k: dict(v) for k, v in q.quantized_layers.items()}
    return out


@contextlib.contextmanager
def _outside_function_modes(device: torch.device):
    """Runs the block with transformers' torch-function modes (its ``torch.device("meta")``
    context) popped, falling back to a nested ``torch.device`` where torch lacks the hooks."""
    pop = getattr(torch.overrides, "_pop_mode_temporarily", None)
    depth = getattr(torch._C, "_len_torch_function_stack", None)
    if pop is None or depth is None:  # pragma: no cover - other torch versions
        with torch.device(device):
            yield
        return
    with contextlib.ExitStack() as stack:
        while depth() > 0:
            stack.enter_context(pop())
        yield


def _mark_initialized(model) -> None:
    """Loaded tensors must not be re-initialized by transformers' ``initialize_weights``; the
    non-persistent buffers are re-created by transformers itself afterwards."""
    non_persistent = set()
    for module in model.modules():
        for attr in module._non_persistent_buffers_set:
            buf = module._buffers.get(attr)
            if buf is not None:
                non_persistent.add(id(buf))
    for t in list(model.parameters()) + [b for b in model.buffers() if b is not None]:
        if id(t) not in non_persistent:
            t._is_hf_initialized = True


def _drop_untieable(model) -> None:
    """transformers ties ``all_tied_weights_keys`` after loading by ``get_parameter``; a tied name
    that became a quantized module's buffer is no parameter any more (populate already tied what
    can be tied)."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if not tied:
        return
    keep = {}
    for target, source in tied.items():
        try:
            model.get_parameter(target)
            model.get_parameter(source)
        except AttributeError:
            continue
        keep[target] = source
    model.all_tied_weights_keys = keep


_registered = False


def register() -> None:
    """Registers :class:`ModelOptConfig` / :class:`ModelOptHfQuantizer` with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers.quantizers import auto

    if auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) not in (None, ModelOptConfig):
        log.warning("transformers already has a quantizer for %r; motensor's replaces it", QUANT_METHOD)
    # transformers' public plug-in point; it refuses a second registration (a reloaded motensor,
    # another package), where the mapping is updated directly.
    if QUANT_METHOD in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = ModelOptConfig
    else:
        auto.register_quantization_config(QUANT_METHOD)(ModelOptConfig)
    # A ModelOptConfig(moe_mode=..., progress=...) passed to from_pretrained for a checkpoint that
    # has its own quantization_config keeps those options (transformers' "loading attributes").
    if ModelOptConfig not in auto.LOADING_ATTRIBUTES_CONFIG_TYPES:
        auto.LOADING_ATTRIBUTES_CONFIG_TYPES = (*auto.LOADING_ATTRIBUTES_CONFIG_TYPES, ModelOptConfig)
    if QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING:
        auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = ModelOptHfQuantizer
    else:
        auto.register_quantizer(QUANT_METHOD)(ModelOptHfQuantizer)
    _registered = True


# Importing this module (motensor.ModelOptConfig, motensor.from_pretrained) is enough to be registered.
register()
