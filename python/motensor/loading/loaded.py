"""What :func:`motensor.load` returns: tensors on the device, in the layout motensor's kernels use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from motensor.checkpoint import Checkpoint, ModuleInfo, QuantConfig
from motensor.formats import FormatSpec


@dataclass(frozen=True)
class LoadStats:
    """How a load went. Rates are decimal GB (1e9 bytes) per second."""

    #: Checkpoint bytes read (the selected tensors as stored).
    source_bytes: int
    #: Bytes of the destination arena (kernel layout, 256-byte aligned tensors).
    arena_bytes: int
    #: Wall time of the whole call: open, plan, allocation, fill, copies, casts.
    seconds: float
    #: Part of ``seconds`` spent opening and validating the checkpoint (0 if it was open).
    open_seconds: float
    #: Seconds inside the Rust fills (all cores, GIL released).
    fill_seconds: float
    #: Seconds blocked on the copy engine (staging slots still being read, final drain).
    wait_seconds: float
    batches: int
    #: Threads the Rust core fills with (``MOTENSOR_NUM_THREADS``).
    threads: int
    #: ``True`` if bytes went through host staging buffers (CUDA), ``False`` if written in place.
    staged: bool
    #: Bytes of staging buffers used, and the ring's shape.
    staging_bytes: int
    chunk_bytes: int
    num_buffers: int
    #: Checkpoint bytes the fill measured itself reading (a tensor-parallel rank: its slices).
    #: Counted per process, so concurrent loads in one process count each other's reads.
    read_bytes: int = 0

    @property
    def gbps(self) -> float:
        """Checkpoint bytes per second over the whole call."""
        return self.source_bytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        how = (
            f"{self.batches} batches through {_size(self.staging_bytes)} of staging"
            if self.staged
            else f"{self.batches} batches in place"
        )
        return (
            f"{_size(self.source_bytes)} in {self.seconds:.3f} s ({self.gbps:.2f} GB/s; "
            f"fill {self.fill_seconds:.3f} s, copy wait {self.wait_seconds:.3f} s, {how}, {self.threads} threads)"
        )


@dataclass(eq=False)
class LoadedModule:
    """One quantized Linear (or a stack of experts) with its tensors on the device.

    ``tensors`` maps each role (``"weight"``, ``"weight_scale"``, ``"weight_scale_2"``,
    ``"input_scale"``, ``"pre_quant_scale"``, ``"bias"``) to a tensor in **kernel layout**:
    4-bit weights ``uint8 [*, N, K/2]`` (INT4 AWQ converted from ``[N/2, K]`` to K-packed
    offset-8 codes), per-group scales transposed to ``[*, K/G, N]`` (E8M0 as ``uint8``),
    FP8_PB_WO block scales ``[N/128, K/128]``, scalar scales 0-d ``float32``; everything else
    as stored (``motensor.layout.to_kernel_layout`` is the same mapping in torch).
    """

    name: str
    info: ModuleInfo
    tensors: dict[str, torch.Tensor]

    @property
    def format(self) -> FormatSpec:
        """The module's quantization format (a row of the format table)."""
        return self.info.format

    def __getitem__(self, role: str) -> torch.Tensor:
        return self.tensors[role]

    def __contains__(self, role: object) -> bool:
        return role in self.tensors

    def get(self, role: str, default: torch.Tensor | None = None) -> torch.Tensor | None:
        return self.tensors.get(role, default)

    def __repr__(self) -> str:
        parts = ", ".join(f"{r}={_describe(t)}" for r, t in self.tensors.items())
        return f"LoadedModule({self.name!r}, {self.info.quant_algo}, {parts})"


@dataclass(eq=False)
class LoadedCheckpoint:
    """A checkpoint loaded onto one device.

    Every tensor is a view into a single device allocation (:attr:`arena`), laid out in file
    order. One allocation makes the load one ``cudaMalloc`` and a stream of large contiguous
    copies, and leaves no fragmentation behind; the price is that memory comes back only when
    *every* view is gone: deleting some tensors (or modules) frees nothing while others live.
    Copy (``.clone()``) the tensors you want to keep apart from the rest. Tensors cast by
    ``dtype=`` to a wider type are the exception: they are separate allocations.

    ``loaded[name]``, ``len(loaded)`` and ``iter(loaded)`` go over the quantized modules.
    """

    checkpoint: Checkpoint
    device: torch.device
    #: Quantized modules by name (those selected by ``modules=``).
    modules: dict[str, LoadedModule]
    #: Every other tensor by its full name: unquantized weights (embeddings, norms, excluded
    #: layers), KV-cache scales, and tensors a module's format does not use.
    tensors: dict[str, torch.Tensor]
    stats: LoadStats
    #: The one uint8 device allocation every tensor views.
    arena: torch.Tensor

    @property
    def quant_config(self) -> QuantConfig | None:
        """The checkpoint's quantization metadata (None if unquantized)."""
        return self.checkpoint.quant_config

    @property
    def config(self) -> dict | None:
        """``config.json`` (the model architecture), if the checkpoint has one."""
        return self.checkpoint.config

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every loaded tensor by its checkpoint name (module tensors in kernel layout)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.modules.values():
            for role, t in m.tensors.items():
                out[m.info.tensors[role]] = t
        out.update(self.tensors)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, module: str) -> LoadedModule:
        return self.modules[module]

    def __repr__(self) -> str:
        q = self.quant_config
        algo = q.quant_algo if q else "unquantized"
        return (
            f"<motensor.LoadedCheckpoint {str(self.checkpoint.root)!r} {algo} on {self.device}: "
            f"{len(self.modules)} quantized modules, {len(self.tensors)} other tensors; {self.stats}>"
        )


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _describe(t: torch.Tensor) -> str:
    dt = str(t.dtype).removeprefix("torch.")
    return f"{dt}{list(t.shape)}"


def group_tensors(
    items: Sequence[Mapping], views: Sequence[torch.Tensor], infos: Mapping[str, ModuleInfo]
) -> tuple[dict[str, LoadedModule], dict[str, torch.Tensor]]:
    """Sorts plan items (with their device views) into modules and other tensors."""
    modules: dict[str, LoadedModule] = {}
    tensors: dict[str, torch.Tensor] = {}
    for it, view in zip(items, views):
        name, role = it["module"], it["role"]
        if name is None or role is None:
            tensors[it["tensor"]] = view
            continue
        m = modules.get(name)
        if m is None:
            m = modules[name] = LoadedModule(name, infos[name], {})
        m.tensors[role] = view
    for m in modules.values():
        # Roles in the format table's order (weight first), not file order.
        rank = {r.role: i for i, r in enumerate(m.format.tensors)}
        m.tensors = dict(sorted(m.tensors.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    ordered = {n: modules[n] for n in sorted(modules)}
    return ordered, dict(sorted(tensors.items()))
