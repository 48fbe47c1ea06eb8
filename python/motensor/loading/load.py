"""``motensor.load``: a ModelOpt checkpoint from page cache or disk into device memory, in
kernel layout, as fast as the machine allows, with bounded host memory."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterable, Mapping, Union, Sequence

import torch

from motensor import _core
from motensor.checkpoint import Checkpoint
from motensor.dtypes import torch_dtype
from motensor.errors import ArgumentError
from motensor.loading.loaded import LoadedCheckpoint, LoadStats, group_tensors
from motensor.loading.pipeline import DIRECT_CHUNK_BYTES, FillStats, fill_direct, fill_staged
from motensor.loading.staging import StagingRing
from motensor.loading.transfer import transfer_for

log = logging.getLogger("motensor.loading")

#: Staging buffer size. Large enough that per-batch overhead (a Python iteration, a rayon
#: fork-join, an event) is a few percent of a batch's copy time at 50 GB/s (64 MiB ~ 1.3 ms);
#: a power of two because torch's pinned allocator rounds every block up to one.
DEFAULT_CHUNK_BYTES = 64 << 20
#: Staging buffers: two already overlap filling with copying; two more absorb jitter between
#: the CPU fills and the DMA engine. 4 x 64 MiB = 256 MiB of pinned host memory at most.
DEFAULT_NUM_BUFFERS = 4

#: Floating dtypes ``dtype=`` converts (never FP8/FP4 data, which is quantized).
_CASTABLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: Module tensors ``dtype=`` converts: they meet activations, not the quantized weight.
_CAST_ROLES = ("pre_quant_scale", "bias")

CheckpointLike = Union[str, "os.PathLike[str]", Checkpoint]
DeviceLike = Union[str, int, torch.device]


def load(
    checkpoint: CheckpointLike,
    device: DeviceLike = "cuda",
    *,
    dtype: torch.dtype | None = None,
    modules: str | Iterable[str] | None = None,
    progress: bool = True,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    num_buffers: int = DEFAULT_NUM_BUFFERS,
    validate_scales: bool | None = None,
    slices: Mapping[str, tuple[int, int, int]] | None = None,
    **hub_kwargs,
) -> LoadedCheckpoint:
    """Loads a ModelOpt checkpoint onto ``device``, every tensor in motensor's kernel layout.

    Args:
        checkpoint: a checkpoint directory (``model.safetensors``, or an index with shards), a
            single ``.safetensors`` file, a Hugging Face Hub repo id (``hub_kwargs``:
            ``revision``, ``cache_dir``, ``token``, ``local_files_only``, as in
            :func:`motensor.open`), or an already opened :class:`motensor.Checkpoint`.
        device: ``"cuda"``, ``"cuda:1"``, a device index, ``"cpu"`` or a ``torch.device``.
        dtype: converts the unquantized floating tensors (embeddings, norms, excluded layers)
            and the modules' ``pre_quant_scale`` and ``bias`` to this dtype. Quantized weights,
            their scales and KV-cache scales are never converted.
        modules: load only these: quantized module or tensor names, ``fnmatch`` globs
            (``"model.layers.*.mlp.*"``) or runs of whole dotted components
            (``"model.layers.0"`` selects everything under layer 0). Only their bytes are read.
        progress: show a byte progress bar (``tqdm``) for loads that take more than a second.
        chunk_bytes, num_buffers: the host staging ring (CUDA): at most
            ``num_buffers * chunk_bytes`` bytes of pinned memory, whatever the checkpoint's size.
        validate_scales: refuse poisoned scales (NaN/Inf, negative, non-positive per-tensor) with
            a ``FormatError`` naming file, tensor and module (see :class:`motensor.Checkpoint`).
            Default: on, or as the given opened checkpoint was opened. ``False`` only to
            inspect a broken file.
        slices: ``{tensor name: (axis, start, len)}``: load only that part of those stored
            tensors (one of their last two axes), re-laid-out as the whole tensor would be;
            only its bytes are read. A tensor-parallel rank's shard (``motensor.parallel``).

    Returns:
        A :class:`LoadedCheckpoint`: ``.modules`` (quantized modules, tensors by role),
        ``.tensors`` (everything else by name), ``.stats``. All tensors view one device
        allocation (see :class:`LoadedCheckpoint` for that trade-off); none aliases a staging
        buffer.

    How: the Rust core plans where every tensor goes in one arena, then fills it batch by batch
    on all cores (``MOTENSOR_NUM_THREADS``, default: every core) with the GIL released,
    reading the files with ``pread`` straight into place (re-layouts through a small per-thread
    buffer), so a shard truncated meanwhile is a ``ShardError``, never SIGBUS. On CUDA each batch goes
    through a pinned staging buffer and an asynchronous copy on a dedicated stream, so the
    CPU fill of one batch overlaps the DMA of the previous one; on the CPU Rust writes straight
    into the result. ``logging`` (``motensor.loading``, INFO) reports the rate at the end.

    Raises:
        motensor.errors.ShardError: a shard vanished or was truncated after it was opened.
        motensor.errors.FormatError: a poisoned scale (with ``validate_scales``).
        motensor.errors.ArgumentError: a bad argument (device, dtype, sizes), or ``modules``
            matching nothing.
        motensor.errors.MotensorError: any problem opening the checkpoint (headers, formats).
    """
    return _load(
        checkpoint,
        device,
        dtype=dtype,
        modules=modules,
        progress=progress,
        chunk_bytes=chunk_bytes,
        num_buffers=num_buffers,
        validate_scales=validate_scales,
        hub_kwargs=hub_kwargs,
        slices=slices,
    )


def _load(
    checkpoint: CheckpointLike,
    device: DeviceLike,
    *,
    dtype: torch.dtype | None,
    modules: str | Iterable[str] | None,
    progress: bool,
    chunk_bytes: int,
    num_buffers: int,
    staged: bool | None = None,
    validate_scales: bool | None = None,
    hub_kwargs: Mapping | None = None,
    slices: Mapping[str, tuple[int, int, int]] | None = None,
) -> LoadedCheckpoint:
    """:func:`load`, plus ``staged``: force (``True``) or forbid (``False``) the staging ring.
    Forcing it on the CPU runs the CUDA path's batch loop with ordinary buffers and
    synchronous copies, which is how the tests cover it without a GPU."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    patterns = _patterns(modules)
    if isinstance(dtype, str):
        from motensor.args import resolve_dtype

        # "auto": the checkpoint's own dtypes, i.e. no conversion.
        dtype = None if dtype == "auto" else resolve_dtype(dtype)
    if dtype is not None and dtype not in _CASTABLE:
        raise ArgumentError(f"dtype= converts to one of {_names(_CASTABLE)}, not {dtype}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ArgumentError(f"dtype is a torch.dtype or None, not {dtype!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (chunk_bytes, num_buffers)):
        raise ArgumentError(f"chunk_bytes ({chunk_bytes!r}) and num_buffers ({num_buffers!r}) are integers")
    chunk_bytes, num_buffers = int(chunk_bytes), int(num_buffers)
    if chunk_bytes < 1 or num_buffers < 1:
        raise ArgumentError(f"chunk_bytes ({chunk_bytes}) and num_buffers ({num_buffers}) must be positive")
    if validate_scales is not None and not isinstance(validate_scales, bool):
        raise ArgumentError(f"validate_scales is True, False or None, not {validate_scales!r}")

    if isinstance(checkpoint, Checkpoint):
        ck, open_seconds = checkpoint, 0.0
        if validate_scales is not None and validate_scales != ck.validate_scales:
            # The flag belongs to the opened checkpoint (its scalars were checked at open).
            ck = Checkpoint(ck.path, validate_scales=validate_scales)
            open_seconds = time.perf_counter() - t0
    else:
        ck = Checkpoint(checkpoint, validate_scales=True if validate_scales is None else validate_scales,
                        progress=progress, **(hub_kwargs or {}))
        open_seconds = time.perf_counter() - t0

    plan = ck._core.plan(patterns, dict(slices) if slices else None)
    read_before = _core.source_bytes_read()
    items = plan.items()
    total = plan.total_bytes
    use_staging = dev.type != "cpu" if staged is None else staged
    arena = torch.empty(total, dtype=torch.uint8, device=dev)

    bar = _progress_bar(total, progress, ck)
    try:
        with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
            if use_staging:
                fill, chunk, nbuf = _fill_through_ring(plan, arena, dev, chunk_bytes, num_buffers, bar.update)
            else:
                chunk, nbuf = max(chunk_bytes, DIRECT_CHUNK_BYTES), 0
                fill = fill_direct(plan, arena, chunk_bytes=chunk, progress=bar.update)
            views = [_view(arena, it) for it in items]
            if dtype is not None:
                views = _cast(arena, items, views, dtype, set(ck.plain_tensors))
    except BaseException:
        # A kept traceback (a notebook keeps the last one) would otherwise hold the whole
        # device arena through this frame.
        arena = None  # type: ignore[assignment]  # noqa: F841
        views = []  # noqa: F841
        raise
    finally:
        bar.close()

    mods, tensors = group_tensors(items, views, ck.modules)
    stats = LoadStats(
        source_bytes=plan.source_bytes,
        read_bytes=_core.source_bytes_read() - read_before,
        arena_bytes=total,
        seconds=time.perf_counter() - t0,
        open_seconds=open_seconds,
        fill_seconds=fill.fill_seconds,
        wait_seconds=fill.wait_seconds,
        batches=fill.batches,
        threads=_core.num_threads(),
        staged=use_staging,
        staging_bytes=fill.staging_bytes,
        chunk_bytes=chunk,
        num_buffers=nbuf,
    )
    log.info("loaded %s onto %s: %s", ck.root, dev, stats)
    return LoadedCheckpoint(checkpoint=ck, device=dev, modules=mods, tensors=tensors, stats=stats, arena=arena)


def _fill_through_ring(plan, arena, dev: torch.device, chunk_bytes: int, num_buffers: int, progress) -> tuple[FillStats, int, int]:
    total = plan.total_bytes
    # A checkpoint smaller than the ring needs no more staging than itself.
    chunk = max(1, min(chunk_bytes, total))
    nbuf = max(1, min(num_buffers, -(-total // chunk)))
    pinned = dev.type == "cuda"
    with StagingRing(nbuf, chunk, pinned=pinned) as ring:
        transfer = transfer_for(dev, len(ring), pinned=pinned)
        return fill_staged(plan, arena, ring, transfer, progress=progress), chunk, nbuf


#: Devices motensor loads onto: the CPU, and CUDA GPUs (where its kernels run).
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: DeviceLike) -> torch.device:
    """``device`` as a ``torch.device`` with an explicit index for CUDA. Anything else than a
    CPU or CUDA device, or no device at all, is an :class:`ArgumentError`."""
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ArgumentError(f"device is a str, int or torch.device ('cpu', 'cuda', 'cuda:1', 0), not {device!r}")
    try:
        dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ArgumentError(f"device {device!r} is not a device torch knows ({e})") from None
    if dev.type not in SUPPORTED_DEVICE_TYPES:
        raise ArgumentError(f"device {str(dev)!r}: motensor loads onto {' or '.join(SUPPORTED_DEVICE_TYPES)} devices only")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _patterns(modules: str | Iterable[str] | None) -> list[str] | None:
    if modules is None:
        return None
    pats = [modules] if isinstance(modules, str) else list(modules)
    bad = [p for p in pats if not isinstance(p, str)]
    if bad:
        raise ArgumentError(f"modules= takes names, globs or dotted prefixes (strings), got {bad!r}")
    return pats


def _view(arena: torch.Tensor, item: Mapping) -> torch.Tensor:
    off, n = item["offset"], item["nbytes"]
    # Offsets are 256-byte aligned, so reinterpreting the bytes as any dtype is legal.
    return arena[off : off + n].view(torch_dtype(item["dtype"])).view(item["shape"])


def _cast(arena: torch.Tensor, items: Sequence[Mapping], views: list[torch.Tensor], dtype: torch.dtype, plain: set[str]) -> list[torch.Tensor]:
    out = list(views)
    for i, (it, t) in enumerate(zip(items, views)):
        wanted = it["role"] in _CAST_ROLES or (it["module"] is None and it["tensor"] in plain)
        if not wanted or t.dtype not in _CASTABLE or t.dtype == dtype:
            continue
        new = t.to(dtype)
        if new.element_size() <= t.element_size():
            # Write the converted values over the originals, so the tensor stays in the arena
            # (same or smaller size); only wider types need a separate allocation.
            dst = arena[it["offset"] : it["offset"] + new.numel() * new.element_size()]
            dst.copy_(new.reshape(-1).view(torch.uint8))
            new = dst.view(dtype).view(t.shape)
        out[i] = new
    return out


def _progress_bar(total: int, enabled: bool, ck: Checkpoint):
    from tqdm.auto import tqdm

    # delay: the bar appears only if the load is still running after a second.
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=f"motensor.load {ck.root.name}",
        delay=1.0,
        disable=not enabled,
        leave=False,
    )


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)
