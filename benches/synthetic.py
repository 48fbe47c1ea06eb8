#!/usr/bin/env python
"""Synthetic Llama-shaped ModelOpt checkpoints for the benchmarks (exact export layout, random data).

``ensure_checkpoint("8b", "nvfp4")`` returns the directory of a Llama-3.1-8B-shaped NVFP4
checkpoint (32 layers, hidden 4096, intermediate 14336, 32 heads, 8 KV heads, vocab 128256,
bf16 embed_tokens / lm_head / norms; 4 shards + index; config.json for LlamaForCausalLM and
hf_quant_config.json), about 6 GB, writing it once under the cache directory
(``benches/.cache/`` unless told otherwise). Formats: ``nvfp4`` and ``w4a16_awq``; shapes:
``tiny`` (tests), ``1b``, ``8b``, ``70b`` (about 43 GB, written tensor by tensor, so host memory
stays small whatever the size).

Tensors are what ModelOpt's ``export_hf_checkpoint`` writes (FORMATS.md section 4) with valid
values, so that the end-to-end benchmark can run them: NVFP4 ``weight`` U8 ``[N, K/2]`` (every
byte is two valid E2M1 codes), ``weight_scale`` E4M3 ``[N, K/16]`` drawn from 64..448 (positive,
normal, never NaN), ``weight_scale_2`` / ``input_scale`` F32 scalars chosen so that weights come
out at most 0.1 in magnitude; W4A16_AWQ ``weight`` U8 ``[N/2, K]`` (signed nibbles packed along
N), ``weight_scale`` F32 ``[N, K/128]`` in 0.004..0.0125 (same bound), ``pre_quant_scale`` bf16 ``[K]`` on
o_proj/down_proj only (ModelOpt folds it into the norms for q/k/v and gate/up). Bulk bytes are
windows of a few 64 MiB random pools, so writing runs at disk speed instead of quantizing 8B
floats; norms are near 1, embeddings N(0, 0.02).

Usage: ``python benches/synthetic.py --shape 8b --format nvfp4 [--cache-dir DIR]``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

#: Bump when the files written change, so stale caches are rewritten.
VERSION = 1
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
MARKER = ".motensor-synthetic.json"
POOL_BYTES = 64 << 20

E4M3_MAX = 448.0
E2M1_MAX = 6.0
#: Largest |weight| the random codes and scales produce, and the activation range input_scale
#: is calibrated for.
WEIGHT_AMAX = 0.1
INPUT_AMAX = 4.0


@dataclass(frozen=True)
class LlamaShape:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float = 500000.0
    max_positions: int = 131072

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, LlamaShape] = {
    "tiny": LlamaShape("tiny", 2, 256, 512, 4, 2, 512),
    "1b": LlamaShape("1b", 16, 2048, 8192, 32, 8, 128256),
    "8b": LlamaShape("8b", 32, 4096, 14336, 32, 8, 128256),
    "70b": LlamaShape("70b", 80, 8192, 28672, 64, 8, 128256),
}

#: CLI / file-name spelling -> ModelOpt quant_algo.
FORMATS: dict[str, str] = {"nvfp4": "NVFP4", "w4a16_awq": "W4A16_AWQ"}
GROUP = {"NVFP4": 16, "W4A16_AWQ": 128}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    #: What fills it: "u8" random bytes, "e4m3" valid block scales, "f32_scale" AWQ group
    #: scales, "bf16" N(0, 0.02), "norm" ~1, "pqs" ~1, or "scalar" (value below).
    kind: str
    value: float = 0.0

    @property
    def nbytes(self) -> int:
        size = {"U8": 1, "F8_E4M3": 1, "BF16": 2, "F32": 4}[self.dtype]
        n = size
        for d in self.shape:
            n *= d
        return n


def _linears(s: LlamaShape) -> list[tuple[str, int, int]]:
    """(module suffix, N, K) of one decoder layer."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    return [
        ("mlp.down_proj", s.hidden, s.intermediate),
        ("mlp.gate_proj", s.intermediate, s.hidden),
        ("mlp.up_proj", s.intermediate, s.hidden),
        ("self_attn.k_proj", kv, s.hidden),
        ("self_attn.o_proj", s.hidden, q),
        ("self_attn.q_proj", q, s.hidden),
        ("self_attn.v_proj", kv, s.hidden),
    ]


def _module(name: str, algo: str, n: int, k: int) -> list[TensorSpec]:
    g = GROUP[algo]
    if algo == "NVFP4":
        return [
            TensorSpec(f"{name}.input_scale", "F32", (), "scalar", INPUT_AMAX / (E2M1_MAX * E4M3_MAX)),
            TensorSpec(f"{name}.weight", "U8", (n, k // 2), "u8"),
            TensorSpec(f"{name}.weight_scale", "F8_E4M3", (n, k // g), "e4m3"),
            # Block scales are at most 448, codes at most 6: |W| <= 6 * 448 * ws2 = WEIGHT_AMAX.
            TensorSpec(f"{name}.weight_scale_2", "F32", (), "scalar", WEIGHT_AMAX / (E2M1_MAX * E4M3_MAX)),
        ]
    if algo == "W4A16_AWQ":
        out = [
            TensorSpec(f"{name}.weight", "U8", (n // 2, k), "u8"),
            TensorSpec(f"{name}.weight_scale", "F32", (n, k // g), "f32_scale"),
        ]
        if name.endswith(("o_proj", "down_proj")):
            out.insert(0, TensorSpec(f"{name}.pre_quant_scale", "BF16", (k,), "pqs"))
        return out
    raise ValueError(f"no synthetic writer for {algo}")


def tensor_groups(shape: LlamaShape, algo: str) -> list[list[TensorSpec]]:
    """Every tensor in file order, grouped so a shard boundary never splits a group."""
    h = shape.hidden
    groups = [[TensorSpec("model.embed_tokens.weight", "BF16", (shape.vocab, h), "bf16")]]
    for i in range(shape.layers):
        p = f"model.layers.{i}"
        layer = [TensorSpec(f"{p}.input_layernorm.weight", "BF16", (h,), "norm")]
        for suffix, n, k in _linears(shape):
            layer += _module(f"{p}.{suffix}", algo, n, k)
        layer.append(TensorSpec(f"{p}.post_attention_layernorm.weight", "BF16", (h,), "norm"))
        groups.append(sorted(layer, key=lambda t: t.name))
    groups.append([TensorSpec("model.norm.weight", "BF16", (h,), "norm")])
    groups.append([TensorSpec("lm_head.weight", "BF16", (shape.vocab, h), "bf16")])
    return groups


def checkpoint_bytes(shape: str, fmt: str) -> int:
    """Bytes of tensor data the checkpoint holds."""
    return sum(t.nbytes for g in tensor_groups(SHAPES[shape], FORMATS[fmt]) for t in g)


def _shards(groups: list[list[TensorSpec]], count: int) -> list[list[TensorSpec]]:
    total = sum(t.nbytes for g in groups for t in g)
    shards: list[list[TensorSpec]] = [[]]
    done = 0
    for g in groups:
        if shards[-1] and done >= total * len(shards) / count and len(shards) < count:
            shards.append([])
        shards[-1].extend(g)
        done += sum(t.nbytes for t in g)
    return shards


class _Pools:
    """Random byte pools that bulk tensors are cut from (windows at varying offsets)."""

    def __init__(self, nbytes: int = POOL_BYTES, seed: int = 0):
        # Pools no larger than the checkpoint (a multiple of 4 bytes, for f32 windows).
        size = max(4, min(POOL_BYTES, nbytes) // 4 * 4)
        rng = np.random.default_rng(seed)
        raw = rng.integers(0, 256, size=size, dtype=np.uint8)
        # E4M3 bytes 0x68..0x7E: exponent field 13..15 -> 64 .. 448, positive, never 0x7F (NaN).
        e4m3 = (raw % 23 + 0x68).astype(np.uint8)
        bf16 = _bf16_bytes(rng.standard_normal(size // 2, dtype=np.float32) * 0.02)
        # Group scales up to WEIGHT_AMAX / 8: |q| <= 8 keeps |W| <= WEIGHT_AMAX.
        f32 = rng.uniform(0.004, WEIGHT_AMAX / 8, size=size // 4).astype(np.float32).view(np.uint8)
        self.pools = {"u8": (raw, 1), "e4m3": (e4m3, 1), "bf16": (bf16, 2), "f32_scale": (f32, 4)}
        self.rng = rng

    def write(self, f: BinaryIO, t: TensorSpec) -> None:
        if t.kind == "scalar":
            f.write(struct.pack("<f", t.value))
            return
        if t.kind in ("norm", "pqs"):
            spread = 0.02 if t.kind == "norm" else 0.1
            v = 1.0 + spread * self.rng.standard_normal(t.nbytes // 2, dtype=np.float32)
            f.write(_bf16_bytes(v).tobytes())
            return
        pool, align = self.pools[t.kind]
        view = memoryview(pool)
        # A different window per tensor (by name), aligned to the element size.
        start = (zlib.crc32(t.name.encode()) % len(pool)) // align * align
        left = t.nbytes
        while left:
            n = min(left, len(pool) - start)
            f.write(view[start : start + n])
            left -= n
            start = 0


def _bf16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bytes, rounding to nearest even."""
    u = x.astype(np.float32).view(np.uint32)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r.view(np.uint8)


def _write_shard(path: Path, tensors: list[TensorSpec], pools: _Pools) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
        off += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            pools.write(f, t)


def _config(shape: LlamaShape, algo: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": shape.rope_theta,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
        "quantization_config": {
            "quant_method": "modelopt",
            "quant_algo": algo,
            "ignore": ["lm_head"],
            "producer": {"name": "modelopt", "version": "0.47.0"},
        },
    }


def _quant_config(algo: str) -> dict:
    q: dict[str, object] = {"quant_algo": algo, "kv_cache_quant_algo": None, "group_size": GROUP[algo]}
    if algo == "W4A16_AWQ":
        q.update(has_zero_point=False, pre_quant_scale=True)
    q["exclude_modules"] = ["lm_head"]
    return {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": q}


def write_checkpoint(dst: Path, shape: str, fmt: str, shards: int = 4) -> Path:
    """Writes the checkpoint into ``dst`` (created; must not exist)."""
    s, algo = SHAPES[shape], FORMATS[fmt]
    dst.mkdir(parents=True)
    groups = tensor_groups(s, algo)
    pools = _Pools(max(t.nbytes for g in groups for t in g))
    parts = _shards(groups, shards)
    weight_map: dict[str, str] = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        _write_shard(dst / fname, part, pools)
        weight_map.update({t.name: fname for t in part})
    total = sum(t.nbytes for p in parts for t in p)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (dst / "config.json").write_text(json.dumps(_config(s, algo), indent=2))
    (dst / "hf_quant_config.json").write_text(json.dumps(_quant_config(algo), indent=2))
    return dst


def ensure_checkpoint(shape: str, fmt: str, cache_dir: Path | str | None = None, shards: int = 4) -> Path:
    """The directory of the ``shape``/``fmt`` checkpoint, written on first use.

    Written into a temporary sibling and renamed, so an interrupted run never leaves a partial
    checkpoint that looks complete. Raises ``OSError`` if the disk lacks room for it.
    """
    if shape not in SHAPES or fmt not in FORMATS:
        raise ValueError(f"shape must be one of {sorted(SHAPES)} and fmt one of {sorted(FORMATS)}")
    cache = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    final = cache / f"{shape}-{fmt}"
    stamp = {"version": VERSION, "shape": shape, "format": fmt, "shards": shards}
    marker = final / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return final
    need = checkpoint_bytes(shape, fmt)
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free
    if free < need * 1.05 + (1 << 30):
        raise OSError(f"{shape}-{fmt} needs {need / 1e9:.1f} GB; {cache} has {free / 1e9:.1f} GB free")
    tmp = cache / f".{shape}-{fmt}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_checkpoint(tmp, shape, fmt, shards)
        (tmp / MARKER).write_text(json.dumps(stamp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def shard_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in name order."""
    return sorted(path.glob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    p.add_argument("--format", choices=sorted(FORMATS), default="nvfp4")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--shards", type=int, default=4)
    a = p.parse_args(argv)
    import time

    t = time.perf_counter()
    path = ensure_checkpoint(a.shape, a.format, a.cache_dir, a.shards)
    gb = checkpoint_bytes(a.shape, a.format) / 1e9
    print(f"{path} ({gb:.2f} GB, ready after {time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
