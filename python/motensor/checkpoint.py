"""``motensor.open``: an exact, validated picture of a ModelOpt checkpoint, read by the Rust core."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from motensor import _core
from motensor.dtypes import dtype_name, torch_dtype
from motensor.errors import ArgumentError, ConfigError, MotensorError
from motensor.formats import FormatSpec, get_format

if TYPE_CHECKING:  # torch is imported when a tensor is first made, not by `import motensor`
    import torch

PathLike = "str | os.PathLike[str]"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor's bytes are and what they are."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype(self.dtype)


@dataclass(frozen=True)
class QuantConfig:
    """The checkpoint's quantization metadata (``hf_quant_config.json`` or ``config.json``)."""

    source: str
    quant_algo: str
    scheme: str  # "single" or "mixed"
    format: FormatSpec | None  # None for MIXED_PRECISION
    group_size: int | None
    kv_cache_quant_algo: str | None
    exclude_modules: tuple[str, ...]
    quantized_layers: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    producer_version: str | None = None


@dataclass(frozen=True)
class ModuleInfo:
    """One quantized Linear (or a stack of them along leading expert dims)."""

    name: str
    format: FormatSpec
    n: int
    k: int
    group_size: int | None
    lead: tuple[int, ...]
    tensors: Mapping[str, str]  # role ("weight", "weight_scale", ...) -> tensor name
    extras: tuple[str, ...] = ()
    #: A 3-D expert parameter quantized in place (Llama 4 / gpt-oss ``experts.gate_up_proj``):
    #: stored input-major ``[E, K, N]`` with ``<param>_weight_scale`` siblings. ``n``/``k``, the
    #: loaded tensors (kernel layout) and :meth:`Checkpoint.dequantize` (``[E, N, K]``) are the
    #: same as for a stack of Linears; the model's parameter is the transpose.
    bmm: bool = False

    @property
    def quant_algo(self) -> str:
        return self.format.name

    @property
    def out_features(self) -> int:
        return self.n

    @property
    def in_features(self) -> int:
        return self.k

    @property
    def has_pre_quant_scale(self) -> bool:
        return "pre_quant_scale" in self.tensors

    @property
    def has_bias(self) -> bool:
        return "bias" in self.tensors

    def __repr__(self) -> str:
        g = f", group={self.group_size}" if self.group_size else ""
        lead = f"{list(self.lead)}x" if self.lead else ""
        pqs = ", pre_quant_scale" if self.has_pre_quant_scale else ""
        bmm = ", in-place experts [E, K, N]" if self.bmm else ""
        return f"ModuleInfo({self.name!r}, {self.quant_algo}, {lead}[{self.n}, {self.k}]{g}{pqs}{bmm})"


class Checkpoint:
    """A ModelOpt unified HF checkpoint opened for reading.

    Headers of every shard are validated when it is opened (offsets, dtypes, shapes), the
    quantization metadata is parsed, and every quantized module's tensors are checked against
    its format; any problem raises a :class:`motensor.errors.MotensorError` naming the file and
    tensor. Tensor data is read (``pread``) only when asked for; no file stays mapped.

    ``validate_scales`` (default True): refuse poisoned scales with a
    :class:`motensor.errors.FormatError` naming file, tensor and module: NaN or Inf anywhere,
    zero or negative per-tensor scales (``weight_scale_2``, ``input_scale``, per-tensor
    ``weight_scale``, KV ``k_scale``/``v_scale``; checked here), negative block or channel scales
    and ``pre_quant_scale`` (checked as :func:`motensor.load` and :meth:`dequantize` read them).
    Block scales of 0 (all-zero blocks) are legal. ``False`` is for inspecting a broken file:
    its numbers will be wrong.
    """

    def __init__(self, path: str | os.PathLike[str], *, validate_scales: bool = True, revision: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, token: str | bool | None = None,
                 local_files_only: bool = False, progress: bool = True):
        from motensor.hub import resolve

        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentError(f"a checkpoint path is a str or os.PathLike, not {type(path).__name__}")
        if not isinstance(validate_scales, bool):
            raise ArgumentError(f"validate_scales is True or False, not {validate_scales!r}")
        # A Hub repo id ("org/name") becomes its snapshot in the HF cache; a path stays a path.
        path = resolve(path, revision=revision, cache_dir=cache_dir, token=token,
                       local_files_only=local_files_only, progress=progress)
        self.path = Path(path)
        self._core = _core.Checkpoint(os.fspath(path), validate_scales)

    @property
    def validate_scales(self) -> bool:
        """Whether scales are validated (see the class docstring)."""
        return self._core.validate_scales

    # -- what is in it -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The checkpoint directory."""
        return Path(self._core.root)

    @property
    def shards(self) -> list[str]:
        return list(self._core.shards)

    @property
    def total_bytes(self) -> int:
        """Bytes of tensor data across all shards."""
        return self._core.total_bytes

    @property
    def notes(self) -> list[str]:
        """Things noticed while opening that are not errors."""
        return list(self._core.notes)

    @cached_property
    def quant_config(self) -> QuantConfig | None:
        raw = self._core.quant_config()
        if raw is None:
            return None
        fmt = get_format(raw["format"]) if raw["scheme"] == "single" else None
        return QuantConfig(
            source=raw["source"],
            quant_algo=raw["quant_algo"],
            scheme=raw["scheme"],
            format=fmt,
            group_size=raw.get("group_size"),
            kv_cache_quant_algo=raw["kv_cache_quant_algo"],
            exclude_modules=tuple(raw["exclude_modules"]),
            quantized_layers=raw.get("quantized_layers", {}),
            producer_version=raw["producer_version"],
        )

    @cached_property
    def modules(self) -> dict[str, ModuleInfo]:
        """Quantized modules by name, in name order."""
        out = {}
        for m in self._core.modules():
            out[m["name"]] = ModuleInfo(
                name=m["name"],
                format=get_format(m["quant_algo"]),
                n=m["n"],
                k=m["k"],
                group_size=m["group_size"],
                lead=tuple(m["lead"]),
                tensors=dict(m["tensors"]),
                extras=tuple(m["extras"]),
                bmm=bool(m.get("bmm", False)),
            )
        return out

    @cached_property
    def config(self) -> dict | None:
        """``config.json`` (the model's architecture), if present."""
        # Read by the Rust core: bounded in size and nesting depth (a 3 GiB or 100k-deep
        # config.json is a ConfigError naming the file, not gigabytes of memory or a
        # RecursionError); the text it returns is valid JSON within those bounds.
        text = self._core.config_text()
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as e:
            raise _error(ConfigError, f"{self.root / 'config.json'}: invalid JSON: {e}", file=self.root / "config.json") from None

    def tensor_names(self) -> list[str]:
        return list(self._core.tensor_names())

    @property
    def plain_tensors(self) -> list[str]:
        """Tensors that belong to no quantized module (embeddings, norms, excluded layers)."""
        return list(self._core.plain_tensors())

    @property
    def kv_tensors(self) -> list[dict]:
        """KV-cache scale tensors (``k_scale``/``v_scale``...) with their attention module."""
        return list(self._core.kv_tensors())

    def tensor_info(self, name: str) -> TensorInfo:
        d = self._core.tensor_info(name)
        return TensorInfo(d["name"], d["dtype"], tuple(d["shape"]), d["file"], d["offset"], d["nbytes"])

    def __contains__(self, name: str) -> bool:
        return name in self._core.tensor_names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensor_names())

    # -- reading -------------------------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor:
        """The stored tensor ``name`` as a CPU torch tensor (exact bytes, stored dtype/shape;
        scales are not validated here: this is the raw view for inspection)."""
        if not isinstance(name, str):
            raise ArgumentError(f"a tensor name is a str, not {type(name).__name__}")
        import torch

        info = self.tensor_info(name)
        out = torch.empty(info.shape, dtype=info.torch_dtype)
        self._core.read_into(name, out.view(-1).view(torch.uint8) if out.numel() else out)
        return out

    def dequantize(self, module: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The logical weight ``[*lead, N, K]`` of quantized ``module``, dequantized on the CPU.

        The math follows the format table (FORMATS.md section 8) and equals the weight
        ModelOpt's fake-quant model computes with. Multi-threaded in Rust, GIL released.
        In-place expert parameters (``info.bmm``) come back as ``[E, N, K]`` like any stack of
        Linears: ``.transpose(-1, -2)`` gives the model parameter's ``[E, K, N]``.
        """
        if not isinstance(module, str):
            raise ArgumentError(f"module is a name (str), not {type(module).__name__}")
        import torch

        dtype = torch.float32 if dtype is None else dtype
        info = self.modules.get(module)
        if info is None:
            raise _error(ArgumentError, f"{module!r} is not a quantized module of {self.root}", module=module)
        if not isinstance(dtype, torch.dtype):
            raise ArgumentError(f"dtype is a torch.dtype (float32, bfloat16 or float16), not {dtype!r}")
        try:
            name = dtype_name(dtype)
        except ValueError as e:
            raise _error(ArgumentError, f"{module}: {e}", module=module) from None
        out = torch.empty((*info.lead, info.n, info.k), dtype=dtype)
        self._core.dequantize_into(module, out, name)
        return out

    # -- display -------------------------------------------------------------------------------
    def summary(self) -> str:
        """A table of modules, formats and sizes (what ``motensor inspect`` prints)."""
        lines = [repr(self)]
        q = self.quant_config
        if q is not None:
            lines.append(
                f"quant_algo={q.quant_algo} kv_cache={q.kv_cache_quant_algo} "
                f"group_size={q.group_size} exclude={list(q.exclude_modules)} (from {Path(q.source).name})"
            )
        rows = []
        for m in self.modules.values():
            nbytes = sum(self.tensor_info(t).nbytes for t in m.tensors.values())
            roles = ",".join(r for r in m.tensors if r != "weight") + (" (in-place experts)" if m.bmm else "")
            shape = "x".join(str(d) for d in (*m.lead, m.n, m.k))
            rows.append((m.name, m.quant_algo, shape, str(m.group_size or "-"), _human(nbytes), roles))
        plain_bytes = sum(self.tensor_info(t).nbytes for t in self.plain_tensors)
        if rows:
            head = ("module", "format", "N x K", "group", "bytes", "tensors")
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            lines.append(fmt.format(*head))
            lines.extend(fmt.format(*r) for r in rows)
        counts: dict[str, int] = {}
        for m in self.modules.values():
            counts[m.quant_algo] = counts.get(m.quant_algo, 0) + 1
        lines.append(
            f"{len(self.modules)} quantized modules ({', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}); "
            f"{len(self.plain_tensors)} unquantized tensors ({_human(plain_bytes)}); "
            f"{len(self.kv_tensors)} KV-cache scales; total {_human(self.total_bytes)}"
        )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        q = self.quant_config
        algo = q.quant_algo if q else "unquantized"
        return (
            f"<motensor.Checkpoint {str(self.root)!r} {algo}: {len(self.shards)} shard(s), "
            f"{len(self.modules)} quantized modules, {_human(self.total_bytes)}>"
        )


def _error(cls: type[MotensorError], msg: str, *, file=None, tensor: str | None = None,
           module: str | None = None) -> MotensorError:
    """A motensor exception raised from Python, with the ``file``/``tensor``/``module``
    attributes the Rust core sets on the ones it raises (so handlers can read them on all)."""
    return cls(msg, file=file, tensor=tensor, module=module)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def open(path: str | os.PathLike[str], *, validate_scales: bool = True,  # noqa: A001 - mirrors safetensors.safe_open
         revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
         token: str | bool | None = None, local_files_only: bool = False, progress: bool = True) -> Checkpoint:
    """Opens a ModelOpt checkpoint directory (or a single ``.safetensors`` file, or a Hugging Face
    Hub repo id such as ``"nvidia/Llama-3.1-8B-Instruct-FP8"``) for reading.

    For a repo id, the safetensors, JSON and tokenizer files of ``revision`` are downloaded into the
    Hugging Face cache (``cache_dir``; ``token`` for gated repos), or only looked up there with
    ``local_files_only=True`` or ``HF_HUB_OFFLINE=1``. ``progress`` shows the download bars.

    ``validate_scales=False`` turns off the poisoned-scale checks (see :class:`Checkpoint`), to
    inspect a broken file.

    >>> ckpt = motensor.open("tests/data/llama-nvfp4")
    >>> ckpt.modules["model.layers.0.mlp.down_proj"].quant_algo
    'NVFP4'
    """
    return Checkpoint(path, validate_scales=validate_scales, revision=revision, cache_dir=cache_dir, token=token,
                      local_files_only=local_files_only, progress=progress)
