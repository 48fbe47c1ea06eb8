"""Raw safetensors bytes with arbitrary (valid or hostile) headers.

Independent of the ``safetensors`` package on purpose: it writes whatever it is told,
including headers that package would refuse to write (duplicate keys, wrong spans, bad dtypes,
a lying length prefix), so tests can check that motensor refuses them.

A safetensors file is ``u64 little-endian N`` + ``N bytes of UTF-8 JSON`` + the data region; each
JSON entry is ``{"dtype", "shape", "data_offsets": [begin, end]}`` with offsets relative to the
data region, plus an optional ``"__metadata__"`` map of strings.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

#: Bytes per element of every safetensors dtype motensor knows.
DTYPE_SIZE: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}

Header = Union[bytes, str, dict, Sequence[tuple]]


@dataclass
class Tensor:
    """One tensor to write: dtype name, shape, and its bytes (``None``: a deterministic pattern)."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes | None = None

    @property
    def nbytes(self) -> int:
        n = DTYPE_SIZE[self.dtype]
        for d in self.shape:
            n *= d
        return n

    def payload(self) -> bytes:
        if self.data is not None:
            return self.data
        return bytes((i * 37 + 11) & 0xFF for i in range(self.nbytes))


def entry(dtype: str, shape: Sequence[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def header_text(header: Header, pad: bool = True) -> bytes:
    """The JSON bytes of a header: raw bytes/str as given; a dict serialized; a sequence of
    ``(key, value)`` pairs serialized in that order (duplicate keys allowed). ``pad`` appends
    spaces to a multiple of 8, as the reference writer does."""
    if isinstance(header, bytes):
        return header
    if isinstance(header, str):
        return header.encode("utf-8")
    pairs = header.items() if isinstance(header, dict) else header
    body = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs)
    text = ("{" + body + "}").encode("utf-8")
    if pad:
        text += b" " * (-len(text) % 8)
    return text


def raw_bytes(header: Header, data: bytes = b"", *, prefix: int | None = None, pad: bool = True) -> bytes:
    """``prefix`` (default: the true header length) + header + data."""
    text = header_text(header, pad=pad)
    n = len(text) if prefix is None else prefix
    return struct.pack("<Q", n & 0xFFFF_FFFF_FFFF_FFFF) + text + data


def write_raw(path: str | os.PathLike, header: Header, data: bytes = b"", **kw) -> Path:
    p = Path(path)
    p.write_bytes(raw_bytes(header, data, **kw))
    return p


def layout(tensors: Iterable[tuple[str, Tensor]], metadata: dict | None = None) -> tuple[list[tuple], bytes]:
    """Header pairs and data region for tensors laid out contiguously in the given order."""
    pairs: list[tuple] = []
    if metadata is not None:
        pairs.append(("__metadata__", metadata))
    data = bytearray()
    for name, t in tensors:
        p = t.payload()
        pairs.append((name, entry(t.dtype, t.shape, len(data), len(data) + len(p))))
        data += p
    return pairs, bytes(data)


def write_tensors(path: str | os.PathLike, tensors: dict[str, Tensor] | Iterable[tuple[str, Tensor]],
                  metadata: dict | None = None) -> Path:
    """A well-formed safetensors file (what ``safetensors.save_file`` would write; metadata
    defaults to ``{"format": "pt"}`` as torch's writer sets it)."""
    items = tensors.items() if isinstance(tensors, dict) else tensors
    pairs, data = layout(items, {"format": "pt"} if metadata is None else metadata)
    return write_raw(path, pairs, data)


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """``(header dict, data_start)`` of a well-formed file (for tests that edit one)."""
    b = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8 : 8 + n]), 8 + n
