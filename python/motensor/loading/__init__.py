"""Loading checkpoints onto a device: :func:`load` and what it returns.

Modules, one job each:

- ``load``: the public :func:`load` (arguments, the arena, views, ``dtype=`` casts, stats).
- ``pipeline``: the batch loop (Rust fills, read-ahead hints, staged or in place).
- ``staging``: the bounded ring of (pinned) host buffers.
- ``transfer``: copy engines (CUDA stream + per-slot events, or synchronous).
- ``loaded``: the result types.
"""
from motensor.loading.load import DEFAULT_CHUNK_BYTES, DEFAULT_NUM_BUFFERS, load
from motensor.loading.loaded import LoadedCheckpoint, LoadedModule, LoadStats

__all__ = [
    "load",
    "LoadedCheckpoint",
    "LoadedModule",
    "LoadStats",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_NUM_BUFFERS",
]
