"""Tiny synthetic checkpoints in exact ModelOpt unified-HF layout, for every format.

The tensor names, dtypes and shapes below are written down from ``shared/FORMATS.md`` section 4
independently of motensor's own format table, so a checkpoint built here checks the table too.
Tests build one, break it (remove a scale, change a dtype or shape, edit the config) and check
the error motensor raises::

    ck = ModelOptCheckpoint.build("NVFP4")
    del ck.tensors[f"{DOWN}.weight_scale"]
    path = ck.write(tmp_path)            # model.safetensors + config.json + hf_quant_config.json

The values are plausible (finite FP8 codes, positive scales) but not a real quantization.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import st

#: quant_algo -> role -> (dtype, shape rule). Shape rules: "nk" [N, K]; "n_k2" [N, K/2] (FP4 pairs
#: along K); "n2_k" [N/2, K] (INT4 pairs along N); "groups" [N, K/G]; "blocks" [ceil(N/G), 1,
#: ceil(K/G), 1]; "n" [N]; "k" [K]; "scalar" []. Optional roles are marked with a trailing "?".
FORMATS: dict[str, dict[str, tuple[str, str]]] = {
    # 4.1
    "FP8": {"weight": ("F8_E4M3", "nk"), "weight_scale": ("F32", "scalar"), "input_scale": ("F32", "scalar")},
    # 4.2
    "FP8_PER_CHANNEL_PER_TOKEN": {"weight": ("F8_E4M3", "nk"), "weight_scale": ("F32", "n")},
    # 4.3
    "FP8_PB_WO": {"weight": ("F8_E4M3", "nk"), "weight_scale": ("F32", "blocks")},
    # 4.4
    "NVFP4": {
        "weight": ("U8", "n_k2"), "weight_scale": ("F8_E4M3", "groups"),
        "weight_scale_2": ("F32", "scalar"), "input_scale": ("F32", "scalar"),
    },
    # 4.5
    "W4A16_NVFP4": {"weight": ("U8", "n_k2"), "weight_scale": ("F8_E4M3", "groups"), "weight_scale_2": ("F32", "scalar")},
    # 4.6
    "NVFP4_AWQ": {
        "weight": ("U8", "n_k2"), "weight_scale": ("F8_E4M3", "groups"),
        "weight_scale_2": ("F32", "scalar"), "input_scale": ("F32", "scalar"), "pre_quant_scale?": ("BF16", "k"),
    },
    # 4.6b
    "W4A8_NVFP4_FP8": {
        "weight": ("U8", "n_k2"), "weight_scale": ("F8_E4M3", "groups"),
        "weight_scale_2": ("F32", "scalar"), "input_scale": ("F32", "scalar"),
    },
    # 4.7
    "W4A16_AWQ": {"weight": ("U8", "n2_k"), "weight_scale": ("F32", "groups"), "pre_quant_scale?": ("BF16", "k")},
    # 4.8
    "W4A8_AWQ": {
        "weight": ("U8", "n2_k"), "weight_scale": ("F32", "groups"), "weight_scale_2": ("F32", "scalar"),
        "input_scale": ("F32", "scalar"), "pre_quant_scale?": ("BF16", "k"),
    },
    # 4.9
    "W8A8_SQ_PER_CHANNEL": {
        "weight": ("I8", "nk"), "weight_scale": ("F32", "n"), "input_scale": ("F32", "scalar"),
        "pre_quant_scale": ("BF16", "k"),
    },
    "W8A16": {"weight": ("I8", "nk"), "weight_scale": ("F32", "n")},
    # 4.10
    "MXFP8": {"weight": ("F8_E4M3", "nk"), "weight_scale": ("U8", "groups")},
    # 4.11
    "MXFP4": {"weight": ("U8", "n_k2"), "weight_scale": ("U8", "groups")},
    "W4A8_MXFP4_FP8": {"weight": ("U8", "n_k2"), "weight_scale": ("U8", "groups"), "input_scale?": ("F32", "scalar")},
}

#: Default group (block) size per format (FORMATS 1.3), where there is one.
GROUP: dict[str, int] = {
    "FP8_PB_WO": 128, "NVFP4": 16, "W4A16_NVFP4": 16, "NVFP4_AWQ": 16, "W4A8_NVFP4_FP8": 32,
    "W4A16_AWQ": 128, "W4A8_AWQ": 128, "MXFP8": 32, "MXFP4": 32, "W4A8_MXFP4_FP8": 32,
}

#: The quant_algo string ModelOpt actually writes (some fall to its lower-case branch, FORMATS 1.3).
MO_NAME: dict[str, str] = {"FP8_PB_WO": "fp8_pb_wo", "MXFP4": "mxfp4"}

#: Per-layer keys ModelOpt adds beside quant_algo (FORMATS 1.3).
EXTRA_KEYS: dict[str, dict] = {
    **{a: {"group_size": GROUP[a]} for a in ("NVFP4", "W4A16_NVFP4", "W4A8_NVFP4_FP8", "MXFP8", "W4A8_MXFP4_FP8")},
    **{a: {"group_size": GROUP[a], "has_zero_point": False, "pre_quant_scale": True} for a in ("NVFP4_AWQ", "W4A16_AWQ", "W4A8_AWQ")},
}

ALL_FORMATS: tuple[str, ...] = tuple(FORMATS)

# One Llama decoder layer, hidden 128, intermediate 256 (every K divisible by every group size).
HIDDEN, INTER, KV = 128, 256, 64
PREFIX = "model.layers.0"
LINEARS: dict[str, tuple[int, int]] = {
    f"{PREFIX}.self_attn.q_proj": (HIDDEN, HIDDEN),
    f"{PREFIX}.self_attn.k_proj": (KV, HIDDEN),
    f"{PREFIX}.self_attn.v_proj": (KV, HIDDEN),
    f"{PREFIX}.self_attn.o_proj": (HIDDEN, HIDDEN),
    f"{PREFIX}.mlp.gate_proj": (INTER, HIDDEN),
    f"{PREFIX}.mlp.up_proj": (INTER, HIDDEN),
    f"{PREFIX}.mlp.down_proj": (HIDDEN, INTER),
}
DOWN = f"{PREFIX}.mlp.down_proj"
VOCAB = 64


def roles(algo: str, optional: bool = True) -> dict[str, tuple[str, str]]:
    """role -> (dtype, shape rule) of ``algo`` (optional roles included if ``optional``)."""
    out = {}
    for r, v in FORMATS[algo].items():
        if r.endswith("?"):
            if optional:
                out[r[:-1]] = v
        else:
            out[r] = v
    return out


def required_roles(algo: str) -> list[str]:
    return [r for r in FORMATS[algo] if not r.endswith("?")]


def shape_of(rule: str, n: int, k: int, g: int | None) -> tuple[int, ...]:
    g = g or 1
    return {
        "nk": (n, k),
        "n_k2": (n, k // 2),
        "n2_k": (n // 2, k),
        "groups": (n, k // g),
        "blocks": (math.ceil(n / g), 1, math.ceil(k / g), 1),
        "n": (n,),
        "k": (k,),
        "scalar": (),
    }[rule]


def _values(dtype: str, shape: tuple[int, ...], role: str, rng: np.random.Generator) -> bytes:
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype == "F32":
        lo, hi = (0.001, 0.01) if role in ("weight_scale_2", "input_scale") else (0.01, 0.1)
        if role in ("pre_quant_scale", "bias"):
            lo, hi = 0.5, 2.0
        return rng.uniform(lo, hi, count).astype("<f4").tobytes()
    if dtype == "BF16":
        f = rng.uniform(0.5, 2.0, count).astype("<f4")
        return (f.view("<u4") >> 16).astype("<u2").tobytes()
    if dtype == "F8_E4M3":
        if role == "weight_scale":  # positive normal block scales, 0.5 .. 1.875
            return rng.integers(0x30, 0x40, count, dtype=np.uint8).tobytes()
        b = rng.integers(0, 256, count, dtype=np.uint8)
        b[(b & 0x7F) == 0x7F] = 0x7E  # no NaN codes
        return b.tobytes()
    if dtype == "U8" and role == "weight_scale":  # E8M0 exponents near 2^-4
        return rng.integers(118, 128, count, dtype=np.uint8).tobytes()
    return rng.integers(0, 256, count * st.DTYPE_SIZE[dtype], dtype=np.uint8).tobytes()


def module_tensors(algo: str, module: str, n: int, k: int, *, group: int | None = None,
                   optional: bool = True, seed: int = 0) -> dict[str, st.Tensor]:
    """The tensors ModelOpt writes for one Linear ``[n, k]`` quantized with ``algo``."""
    g = group or GROUP.get(algo)
    rng = np.random.default_rng(seed)
    out = {}
    for role, (dtype, rule) in roles(algo, optional).items():
        shape = shape_of(rule, n, k, g)
        out[f"{module}.{role}"] = st.Tensor(dtype, shape, _values(dtype, shape, role, rng))
    return out


def _bf16(shape: tuple[int, ...], rng: np.random.Generator) -> st.Tensor:
    return st.Tensor("BF16", shape, _values("BF16", shape, "plain", rng))


@dataclass
class ModelOptCheckpoint:
    """A whole checkpoint in memory: tensors, config.json and hf_quant_config.json."""

    tensors: dict[str, st.Tensor]
    config: dict
    hf_quant_config: dict | None
    algo: str

    @classmethod
    def build(cls, algo: str = "NVFP4", *, linears: dict[str, tuple[int, int]] | None = None,
              exclude: tuple[str, ...] = ("lm_head",), group: int | None = None,
              optional: bool = True) -> "ModelOptCheckpoint":
        """A one-layer Llama with every Linear of ``linears`` quantized as ``algo``."""
        linears = LINEARS if linears is None else linears
        rng = np.random.default_rng(1)
        tensors: dict[str, st.Tensor] = {"model.embed_tokens.weight": _bf16((VOCAB, HIDDEN), rng)}
        for i, (name, (n, k)) in enumerate(linears.items()):
            tensors.update(module_tensors(algo, name, n, k, group=group, optional=optional, seed=i))
        tensors[f"{PREFIX}.input_layernorm.weight"] = _bf16((HIDDEN,), rng)
        tensors[f"{PREFIX}.post_attention_layernorm.weight"] = _bf16((HIDDEN,), rng)
        tensors["model.norm.weight"] = _bf16((HIDDEN,), rng)
        tensors["lm_head.weight"] = _bf16((VOCAB, HIDDEN), rng)

        layer = {"quant_algo": MO_NAME.get(algo, algo), **EXTRA_KEYS.get(algo, {})}
        if group is not None and "group_size" in layer:
            layer["group_size"] = group
        hf = {
            "producer": {"name": "modelopt", "version": "0.47.0"},
            "quantization": {**layer, "kv_cache_quant_algo": None, "exclude_modules": list(exclude)},
        }
        qc = {
            "quant_method": "modelopt",
            "quant_algo": layer["quant_algo"],
            "ignore": list(exclude),
            "kv_cache_scheme": None,
            "producer": hf["producer"],
        }
        if "group_size" in layer and algo in ("NVFP4", "W4A16_NVFP4"):
            qc["config_groups"] = {"group_0": {"weights": {"group_size": layer["group_size"]}, "targets": ["Linear"]}}
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": HIDDEN,
            "intermediate_size": INTER,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": VOCAB,
            "torch_dtype": "bfloat16",
            "quantization_config": qc,
        }
        return cls(tensors=tensors, config=config, hf_quant_config=hf, algo=algo)

    @classmethod
    def mixed(cls, layers: dict[str, str]) -> "ModelOptCheckpoint":
        """MIXED_PRECISION: ``layers`` maps module -> quant_algo; other Linears stay BF16."""
        ck = cls.build("FP8", linears={})
        rng = np.random.default_rng(2)
        quantized = {}
        for i, (name, (n, k)) in enumerate(LINEARS.items()):
            algo = layers.get(name)
            if algo is None:
                ck.tensors[f"{name}.weight"] = _bf16((n, k), rng)
                continue
            ck.tensors.update(module_tensors(algo, name, n, k, seed=i))
            quantized[name] = {"quant_algo": MO_NAME.get(algo, algo), **EXTRA_KEYS.get(algo, {})}
        ck.hf_quant_config = {
            "producer": {"name": "modelopt", "version": "0.47.0"},
            "quantization": {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None, "quantized_layers": quantized},
        }
        ck.config["quantization_config"] = {
            "quant_method": "modelopt", "quant_algo": "MIXED_PRECISION", "ignore": [],
            "quantized_layers": quantized, "producer": ck.hf_quant_config["producer"],
        }
        ck.algo = "MIXED_PRECISION"
        return ck

    def copy(self) -> "ModelOptCheckpoint":
        return copy.deepcopy(self)

    # -- breaking it --------------------------------------------------------------------------
    def set(self, name: str, *, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> None:
        """Changes a tensor's dtype and/or shape; its bytes are regenerated to stay consistent
        with the header (the breakage is in the format, not in the safetensors file)."""
        t = self.tensors[name]
        dtype = dtype or t.dtype
        shape = tuple(t.shape if shape is None else shape)
        role = name.rsplit(".", 1)[-1]
        self.tensors[name] = st.Tensor(dtype, shape, _values(dtype, shape, role, np.random.default_rng(3)))

    # -- writing ------------------------------------------------------------------------------
    def write(self, path: str | os.PathLike, *, shards: int = 1, hf_quant: bool = True,
              config_json: bool = True) -> Path:
        """Writes the checkpoint directory (created if needed) and returns it. ``shards > 1``
        writes ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        names = list(self.tensors)
        if shards <= 1:
            st.write_tensors(d / "model.safetensors", {n: self.tensors[n] for n in names})
        else:
            per = math.ceil(len(names) / shards)
            weight_map = {}
            for i in range(shards):
                fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                part = names[i * per : (i + 1) * per]
                st.write_tensors(d / fname, {n: self.tensors[n] for n in part})
                weight_map.update({n: fname for n in part})
            total = sum(t.nbytes for t in self.tensors.values())
            (d / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        if config_json:
            (d / "config.json").write_text(json.dumps(self.config, indent=2))
        if hf_quant and self.hf_quant_config is not None:
            (d / "hf_quant_config.json").write_text(json.dumps(self.hf_quant_config, indent=4))
        return d


def write_checkpoint(path: str | os.PathLike, algo: str = "NVFP4",
                     edit: Callable[[ModelOptCheckpoint], None] | None = None, **kw) -> Path:
    """Shorthand: build ``algo``, apply ``edit`` (to break it), write to ``path``."""
    ck = ModelOptCheckpoint.build(algo)
    if edit is not None:
        edit(ck)
    return ck.write(path, **kw)
