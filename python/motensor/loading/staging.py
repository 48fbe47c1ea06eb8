"""The staging ring: a few host buffers that the Rust core fills and the device copies read.

Host memory stays bounded: a load holds at most ``num_buffers * chunk_bytes`` of staging,
whatever the checkpoint's size. Buffers are allocated lazily (slot ``k`` only when batch ``k``
needs it, so the allocation of slot 1 overlaps the copy out of slot 0, and a checkpoint smaller
than one chunk never allocates the rest) and dropped when the load ends.

Pinned buffers come from torch's caching host allocator: dropping one returns it to torch's
cache rather than to the driver, so the next load reuses it without paying ``cudaHostAlloc``
again (pinning is expensive: the kernel faults in and locks every page). The allocator also
records the copy stream's events on the block, so a buffer dropped while a copy still reads it
is not handed out again before that copy ends. ``torch.cuda.host_memory_stats()`` shows it.

Every buffer is counted while alive (:func:`live_buffers`), so tests can prove that loads do
not leak staging memory.
"""
from __future__ import annotations

import threading
import weakref

import torch

from motensor.errors import ArgumentError

_lock = threading.Lock()
_live = 0
_peak = 0


def _released() -> None:
    global _live
    with _lock:
        _live -= 1


def _allocated() -> None:
    global _live, _peak
    with _lock:
        _live += 1
        _peak = max(_peak, _live)


def live_buffers() -> int:
    """Staging buffers alive right now, across all loads of this process."""
    return _live


def peak_live_buffers(reset: bool = False) -> int:
    """The most staging buffers alive at once since the last reset (``reset=True`` restarts
    the count from the current number)."""
    global _peak
    with _lock:
        peak = _peak
        if reset:
            _peak = _live
    return peak


class StagingRing:
    """``num_buffers`` host buffers of ``chunk_bytes`` each, used round-robin by batch index.

    ``pinned=True`` allocates page-locked memory (needed for truly asynchronous host-to-device
    copies); ``pinned=False`` ordinary memory (used to exercise the staged path on the CPU).
    Use as a context manager, or call :meth:`close`, so buffers are dropped even on error.
    """

    def __init__(self, num_buffers: int, chunk_bytes: int, *, pinned: bool):
        if num_buffers < 1:
            raise ArgumentError(f"num_buffers must be at least 1, got {num_buffers}")
        if chunk_bytes < 1:
            raise ArgumentError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.chunk_bytes = int(chunk_bytes)
        self.pinned = pinned
        self._slots: list[torch.Tensor | None] = [None] * num_buffers

    def __len__(self) -> int:
        return len(self._slots)

    def slot(self, i: int) -> int:
        """The slot batch ``i`` uses."""
        return i % len(self._slots)

    def buffer(self, slot: int) -> torch.Tensor:
        """The uint8 buffer of ``slot``, allocated on first use."""
        buf = self._slots[slot]
        if buf is None:
            buf = torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=self.pinned)
            _allocated()
            weakref.finalize(buf, _released)
            self._slots[slot] = buf
        return buf

    @property
    def allocated_bytes(self) -> int:
        """Bytes of the buffers allocated so far."""
        return sum(b.nbytes for b in self._slots if b is not None)

    def close(self) -> None:
        """Drops every buffer (pinned ones go back to torch's host cache)."""
        self._slots = [None] * len(self._slots)

    def __enter__(self) -> "StagingRing":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        used = sum(b is not None for b in self._slots)
        kind = "pinned" if self.pinned else "pageable"
        return f"<StagingRing {used}/{len(self._slots)} x {self.chunk_bytes} B {kind}>"
