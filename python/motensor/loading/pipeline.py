"""The batch loop: checkpoint bytes -> (staging ring) -> destination arena.

The Rust core's load plan places every tensor, already in kernel layout, at an offset of one
arena and cuts the arena into contiguous batches (``LoadPlan.batches(chunk)``). Two ways to run
them:

- :func:`fill_staged` (CUDA): per batch, ask the kernel to start reading a later batch
  (``POSIX_FADV_WILLNEED``), wait until the batch's staging slot is free, let Rust fill the slot on all
  cores with the GIL released (re-laying-out while it copies), then start an asynchronous copy of
  the slot into ``arena[begin:end]`` on a copy stream. Filling batch ``i+1`` on the CPU overlaps
  the DMA of batch ``i``, so a load runs at about the slower of the two rates, not their sum.
- :func:`fill_direct` (CPU): Rust writes straight into the arena, batch by batch (no staging, no
  second copy); batches exist only to drive the progress bar and the read-ahead hints.

How the Rust side reads: ``pread`` straight into the destination (the CPU arena or a pinned
staging slot), re-layouts through a small per-thread buffer. A memory map was used before and
copied at the same cost on the 2-core CI box (the first touch of a page is the cost either way),
but a map dies with SIGBUS when another process truncates the file mid-copy, and on the CPU
path it kept the mapped files resident beside the arena (peak RSS about twice the checkpoint;
with ``pread`` it is the arena plus a few MiB). A truncation during a ``pread`` is a short read:
a ``ShardError`` naming file and tensor. ``MADV_WILLNEED`` became ``POSIX_FADV_WILLNEED`` on
the file, so cold reads still run ahead of the copy threads. The 16-thread page-cache rate of
``pread`` into pinned memory on the H100 machine is still to be measured (``make gpu-check``);
the mmap figure there was 69 GB/s, above the 53 GB/s H2D limit. ``O_DIRECT`` bypasses the page
cache, so every load, even the second one, would pay the disk, and it needs aligned buffers and
offsets that safetensors does not give.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from motensor.loading.staging import StagingRing
from motensor.loading.transfer import Transfer

#: Batches whose source pages are requested ahead of the one being filled.
PREFETCH_AHEAD = 2

#: Batch size of the direct (CPU) path: large, since there is no staging buffer to bound.
DIRECT_CHUNK_BYTES = 256 << 20

Progress = Optional[Callable[[int], None]]


@dataclass
class FillStats:
    """Where a load's time went."""

    batches: int = 0
    #: Seconds inside the Rust fills (reading, re-laying-out, writing; all cores).
    fill_seconds: float = 0.0
    #: Seconds blocked on the copy engine (a staging slot still being read, and the final
    #: drain). Large next to ``fill_seconds`` means the load is copy-bound.
    wait_seconds: float = 0.0
    #: Bytes of staging buffers used (0 on the direct path).
    staging_bytes: int = 0


def _prefetcher(batches) -> Callable[[int], None]:
    n = len(batches)
    state = {"next": 0}

    def upto(i: int) -> None:
        # Hints are cheap (the kernel queues the reads and returns) and each batch is hinted
        # once, however many times the loop asks.
        while state["next"] < n and state["next"] <= i:
            batches.prefetch(state["next"])
            state["next"] += 1

    return upto


def fill_direct(plan, arena: torch.Tensor, *, chunk_bytes: int = DIRECT_CHUNK_BYTES, progress: Progress = None) -> FillStats:
    """Fills a CPU ``arena`` (uint8, ``plan.total_bytes`` long) straight from the checkpoint."""
    stats = FillStats()
    batches = plan.batches(max(int(chunk_bytes), 1))
    prefetch = _prefetcher(batches)
    for i in range(len(batches)):
        prefetch(i + PREFETCH_AHEAD)
        begin, end = batches.range(i)
        t = time.perf_counter()
        batches.fill(i, arena[begin:end])
        stats.fill_seconds += time.perf_counter() - t
        stats.batches += 1
        if progress is not None:
            progress(end - begin)
    return stats


def fill_staged(plan, arena: torch.Tensor, ring: StagingRing, transfer: Transfer, *, progress: Progress = None) -> FillStats:
    """Fills ``arena`` (on any device) through the staging ring, copying with ``transfer``.

    On error every copy in flight is waited for before returning, so neither the staging
    buffers nor the arena are released while the DMA engine still uses them.
    """
    stats = FillStats()
    batches = plan.batches(ring.chunk_bytes)
    prefetch = _prefetcher(batches)
    try:
        for i in range(len(batches)):
            prefetch(i + PREFETCH_AHEAD)
            slot = ring.slot(i)
            t = time.perf_counter()
            transfer.wait(slot)
            t1 = time.perf_counter()
            buf = ring.buffer(slot)
            begin, end = batches.range(i)
            batches.fill(i, buf)
            t2 = time.perf_counter()
            transfer.copy(slot, arena[begin:end], buf[: end - begin])
            stats.wait_seconds += t1 - t
            stats.fill_seconds += t2 - t1
            stats.batches += 1
            if progress is not None:
                progress(end - begin)
        t = time.perf_counter()
        transfer.finish()
        stats.wait_seconds += time.perf_counter() - t
    except BaseException:
        transfer.abort()
        # A traceback keeps this frame alive (a notebook keeps the last one): drop the
        # reference to the staging buffer so it is not pinned for as long as the traceback.
        buf = None  # noqa: F841
        raise
    finally:
        stats.staging_bytes = ring.allocated_bytes
    return stats
