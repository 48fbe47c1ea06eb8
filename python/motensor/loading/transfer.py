"""Copy engines for the staged load: how a filled staging buffer reaches the destination arena.

The batch loop (``pipeline.fill_staged``) is written against this small interface so that one
loop serves the CUDA path (asynchronous copies on a dedicated stream, one event per staging
slot) and a synchronous path (any other device, and the CPU when tests force staging).
"""
from __future__ import annotations

from typing import Protocol

import torch


class Transfer(Protocol):
    """Moves staging buffers into the arena."""

    def wait(self, slot: int) -> None:
        """Blocks until the last copy that read staging ``slot`` has finished, so the slot may
        be overwritten."""

    def copy(self, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Starts copying ``src`` (a view of staging ``slot``) into ``dst`` (an arena view)."""

    def finish(self) -> None:
        """Blocks until every copy has landed; afterwards the arena is safe to use from the
        caller's current stream."""

    def abort(self) -> None:
        """Called on error: waits for copies in flight (they still read staging buffers and
        write the arena, both about to be released)."""


class SyncTransfer:
    """``dst.copy_(src)`` at once; nothing is ever in flight."""

    def wait(self, slot: int) -> None:
        pass

    def copy(self, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        dst.copy_(src)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


class CudaTransfer:
    """Asynchronous host-to-device copies on a dedicated stream.

    The copy stream first waits for the caller's current stream (the arena may reuse memory
    that pending work there still touches); each copy records its slot's event so the CPU
    refills a slot only once the DMA engine has read it; :meth:`finish` synchronizes the copy
    stream and orders the caller's stream after it. A separate stream keeps the copies from
    queuing behind (or holding up) unrelated work on the default stream.
    """

    def __init__(self, device: torch.device, num_slots: int):
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.stream.wait_stream(torch.cuda.current_stream(device))
        self._events: list[torch.cuda.Event | None] = [None] * num_slots

    def wait(self, slot: int) -> None:
        ev = self._events[slot]
        if ev is not None:
            ev.synchronize()

    def copy(self, slot: int, dst: torch.Tensor, src: torch.Tensor) -> None:
        with torch.cuda.stream(self.stream):
            # Pinned source + non_blocking: a DMA the CPU does not wait for. torch records the
            # stream on the pinned block, so the caching host allocator will not reuse it early.
            dst.copy_(src, non_blocking=True)
            ev = self._events[slot]
            if ev is None:
                ev = self._events[slot] = torch.cuda.Event()
            ev.record(self.stream)

    def finish(self) -> None:
        self.stream.synchronize()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def abort(self) -> None:
        self.stream.synchronize()


def transfer_for(device: torch.device, num_slots: int, *, pinned: bool) -> Transfer:
    """The copy engine for ``device``: asynchronous from pinned buffers on CUDA, else synchronous."""
    if device.type == "cuda" and pinned:
        return CudaTransfer(device, num_slots)
    return SyncTransfer()
