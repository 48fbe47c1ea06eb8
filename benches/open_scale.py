#!/usr/bin/env python
"""Open / plan at scale (issue 15): ``motensor.open`` and the load plan on checkpoints of 2.4k,
75k and 180k tensors, against ``safetensors.safe_open`` of every shard and ``json.loads`` of
the same headers.

    python benches/open_scale.py                  # llama70b (2.4k), qwen3moe (75k), deepseek (180k)
    python benches/open_scale.py --smoke          # small shapes (tests)

The checkpoints are NVFP4 ModelOpt exports with real headers, index, config.json and
hf_quant_config.json, but *sparse*: each shard is its header, the per-tensor scalars (written,
since ``open`` validates them: a few KiB per shard), then a hole up to the size the header
declares (``truncate``), so a 400 GB DeepSeek-shaped checkpoint costs a few MB of disk.

Cases ``<shape>-<ntensors>`` (metric ``ms``, min of ``--repeats`` in one process, headers in the
page cache): ``motensor_open`` (``motensor.open(path)``: discovery, every header parsed and
validated, index cross-check, module view, per-tensor scale validation), ``motensor_plan``
(``ck._core.plan(None)``: the load plan of every tensor), ``motensor_plan_items`` (the plan as
the Python dicts ``motensor.load`` reads), ``safetensors_safe_open`` (``safe_open(f, "pt")`` of
every shard, kept open until all are) and ``json_loads`` (Python's ``json.loads`` of every
shard's header bytes, read from the file). Notes carry the ratios (goals: open <= safe_open,
plan <= open). Writes ``benches/results/open_scale-cpu-<date>.json`` + PNG.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (benches/common.py)
import synthetic  # noqa: E402  (benches/synthetic.py)
from synthetic import TensorSpec  # noqa: E402

#: Bump when the files written change, so stale caches are rewritten.
VERSION = 1


@dataclass(frozen=True)
class MoeShape:
    """A decoder of ``layers`` layers, the last ``moe_layers`` of which are mixture-of-experts
    layers of ``experts`` routed experts (+ ``shared`` shared experts), the others dense."""
    name: str
    layers: int
    moe_layers: int
    hidden: int
    intermediate: int
    moe_intermediate: int
    experts: int
    shared: int
    attention: tuple[tuple[str, int, int], ...]  # (suffix, N, K)
    norms: tuple[str, ...]
    vocab: int
    shards: int


QWEN3_MOE = MoeShape(  # Qwen3-30B-A3B: 48 layers x 128 experts, 16 shards -> 74.7k tensors
    "qwen3moe", 48, 48, 2048, 6144, 768, 128, 0,
    (("self_attn.k_proj", 512, 2048), ("self_attn.o_proj", 2048, 4096), ("self_attn.q_proj", 4096, 2048),
     ("self_attn.v_proj", 512, 2048)),
    ("input_layernorm", "post_attention_layernorm", "self_attn.k_norm", "self_attn.q_norm"), 151936, 16)
DEEPSEEK = MoeShape(  # DeepSeek-V3/R1: 61 layers, 58 with 256 experts + 1 shared, MLA -> ~180k tensors
    "deepseek", 61, 58, 7168, 18432, 2048, 256, 1,
    (("self_attn.kv_a_proj_with_mqa", 576, 7168), ("self_attn.kv_b_proj", 32768, 512),
     ("self_attn.o_proj", 7168, 16384), ("self_attn.q_a_proj", 1536, 7168), ("self_attn.q_b_proj", 24576, 1536)),
    ("input_layernorm", "post_attention_layernorm", "self_attn.kv_a_layernorm", "self_attn.q_a_layernorm"), 129280, 80)
#: Small stand-ins with the same structure (the --smoke run).
SMOKE = {
    "qwen3moe": MoeShape("qwen3moe-smoke", 2, 2, 256, 512, 128, 8, 0, QWEN3_MOE.attention[:0] + (
        ("self_attn.q_proj", 256, 256),), ("input_layernorm",), 512, 2),
    "deepseek": MoeShape("deepseek-smoke", 3, 2, 256, 512, 128, 8, 1, (("self_attn.q_a_proj", 128, 256),),
                         ("input_layernorm",), 512, 3),
}


def _moe_groups(s: MoeShape) -> tuple[list[list[TensorSpec]], list[str]]:
    """Tensor groups (one per layer, plus embeddings / head) and the modules left unquantized."""
    h = s.hidden
    groups = [[TensorSpec("model.embed_tokens.weight", "BF16", (s.vocab, h), "bf16")]]
    excluded = ["lm_head"]
    for i in range(s.layers):
        p = f"model.layers.{i}"
        layer = [TensorSpec(f"{p}.{n}.weight", "BF16", (h,), "norm") for n in s.norms]
        for suffix, n, k in s.attention:
            layer += synthetic._module(f"{p}.{suffix}", "NVFP4", n, k)
        mlps: list[tuple[str, int]] = []
        if i >= s.layers - s.moe_layers:
            mlps += [(f"{p}.mlp.experts.{e}", s.moe_intermediate) for e in range(s.experts)]
            mlps += [(f"{p}.mlp.shared_experts", s.moe_intermediate * s.shared)] if s.shared else []
            layer.append(TensorSpec(f"{p}.mlp.gate.weight", "BF16", (s.experts, h), "bf16"))
            excluded.append(f"{p}.mlp.gate")
        else:
            mlps.append((f"{p}.mlp", s.intermediate))
        for m, inter in mlps:
            layer += synthetic._module(f"{m}.down_proj", "NVFP4", h, inter)
            layer += synthetic._module(f"{m}.gate_proj", "NVFP4", inter, h)
            layer += synthetic._module(f"{m}.up_proj", "NVFP4", inter, h)
        groups.append(sorted(layer, key=lambda t: t.name))
    groups.append([TensorSpec("model.norm.weight", "BF16", (h,), "norm")])
    groups.append([TensorSpec("lm_head.weight", "BF16", (s.vocab, h), "bf16")])
    return groups, excluded


def _dense_groups(shape: str) -> tuple[list[list[TensorSpec]], list[str]]:
    return synthetic.tensor_groups(synthetic.SHAPES[shape], "NVFP4"), ["lm_head"]


def write_sparse(dst: Path, groups: list[list[TensorSpec]], excluded: list[str], shards: int) -> Path:
    """Writes a sparse checkpoint into ``dst`` (created; must not exist)."""
    dst.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    parts = synthetic._shards(groups, shards)
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        # Scalars first (written: open validates them), then everything else (a hole).
        scalars = [t for t in part if t.kind == "scalar"]
        bulk = [t for t in part if t.kind != "scalar"]
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        off = 0
        for t in scalars + bulk:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + t.nbytes]}
            off += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(dst / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            f.write(b"".join(struct.pack("<f", t.value) for t in scalars))
            f.truncate(8 + len(raw) + off)
        weight_map.update({t.name: fname for t in part})
    total = sum(t.nbytes for g in groups for t in g)
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (dst / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    q = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16, "exclude_modules": excluded}
    (dst / "hf_quant_config.json").write_text(
        json.dumps({"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": q}, indent=2))
    return dst


def ensure_sparse(name: str, smoke: bool, cache_dir: Path | None) -> Path:
    """The directory of sparse checkpoint ``name`` (written once under the cache)."""
    cache = Path(cache_dir) if cache_dir is not None else synthetic.CACHE_DIR
    key = f"sparse-{name}{'-smoke' if smoke else ''}"
    final = cache / key
    stamp = {"version": VERSION, "name": name, "smoke": smoke}
    marker = final / synthetic.MARKER
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return final
    if name in ("qwen3moe", "deepseek"):
        s = SMOKE[name] if smoke else {"qwen3moe": QWEN3_MOE, "deepseek": DEEPSEEK}[name]
        (groups, excluded), shards = _moe_groups(s), s.shards
    else:
        (groups, excluded), shards = _dense_groups("tiny" if smoke else "70b"), 2 if smoke else 8
    tmp = cache / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        write_sparse(tmp, groups, excluded, shards)
        (tmp / synthetic.MARKER).write_text(json.dumps(stamp))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- the timed operations ------------------------------------------------------------------------
def best_ms(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        runs.append((time.perf_counter() - t) * 1e3)
        del out
    return min(runs), runs


def _safe_open_all(files: list[Path]) -> int:
    from safetensors import safe_open

    handles = [safe_open(f, "pt") for f in files]
    n = sum(len(h.keys()) for h in handles)
    del handles
    return n


def _json_headers(files: list[Path]) -> int:
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            n += len(json.loads(fh.read(size))) - 1
    return n


def measure(path: Path, repeats: int) -> tuple[int, dict[str, tuple[float, list[float]]]]:
    import motensor

    files = sorted(path.glob("*.safetensors"))
    ck = motensor.open(path)
    n = len(ck.tensor_names())
    assert _safe_open_all(files) == n == _json_headers(files), "tensor counts disagree"
    out = {
        "motensor_open": best_ms(lambda: motensor.open(path), repeats),
        "motensor_plan": best_ms(lambda: ck._core.plan(None), repeats),
        "motensor_plan_items": best_ms(lambda: ck._core.plan(None).items(), repeats),
        "safetensors_safe_open": best_ms(lambda: _safe_open_all(files), repeats),
        "json_loads": best_ms(lambda: _json_headers(files), repeats),
    }
    return n, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="llama70b,qwen3moe,deepseek")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="small stand-ins of each shape, 2 repeats")
    p.add_argument("--cache-dir", type=Path, default=None, help="sparse checkpoints (default benches/.cache)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    a = p.parse_args(argv)
    repeats = 2 if a.smoke else a.repeats
    import torch  # noqa: F401  (safe_open "pt" imports it; not part of any timing)

    rows: list[dict] = []
    for name in a.shapes.split(","):
        path = ensure_sparse(name, a.smoke, a.cache_dir)
        n, figs = measure(path, repeats)
        case = f"{name}-{n}"
        so = figs["safetensors_safe_open"][0]
        op = figs["motensor_open"][0]
        for impl, (v, runs) in figs.items():
            note = f"{v / so:.2f}x safe_open"
            if impl.startswith("motensor_plan"):
                note += f"; {v / op:.2f}x motensor_open"
            note += "; runs " + ", ".join(f"{r:.1f}" for r in runs)
            rows.append({"case": case, "impl": impl, "metric": "ms", "value": round(v, 3), "note": note})
        shards = len(list(path.glob("*.safetensors")))
        print(f"{case} ({shards} shards): " + ", ".join(f"{k} {v[0]:.1f} ms" for k, v in figs.items()), flush=True)
    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, common.ROOT),
                                                            *(argv if argv is not None else sys.argv[1:])])
    out = common.write_results(
        "open_scale", rows, command, a.out_dir, device="cpu", smoke=a.smoke,
        note=(f"wall ms, min of {repeats} in one process, headers in the page cache; sparse NVFP4 checkpoints "
              f"(scalars written, bulk data a hole); {os.cpu_count()} CPUs, shared box"),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
