"""Writes seed corpora for the fuzz targets (corpus/ is not committed; run this first):

    cd rust/core/fuzz && ../../../.venv/bin/python make_seeds.py

Seeds are the synthetic ModelOpt checkpoints of tests/helpers (every format, plus MIXED_PRECISION
and a config.json-only variant), so the fuzzer starts from inputs that reach the module view,
the dequantizer and the load plan instead of having to discover a valid header first.
"""
from __future__ import annotations

import json
import struct
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "tests"))

from helpers import modelopt_layout as mol  # noqa: E402
from helpers import st  # noqa: E402


def small(algo: str) -> mol.ModelOptCheckpoint:
    # One small Linear keeps seeds a few KB: libFuzzer mutates small inputs much faster.
    return mol.ModelOptCheckpoint.build(algo, linears={"m.proj": (8, 128)}, exclude=("lm_head",))


def main() -> None:
    corpus = HERE / "corpus"
    for t in ("header", "shard", "checkpoint"):
        (corpus / t).mkdir(parents=True, exist_ok=True)
    cks = {a: small(a) for a in mol.ALL_FORMATS}
    mixed = small("NVFP4")
    mixed.hf_quant_config["quantization"] = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": None,
                                             "quantized_layers": {"m.proj": {"quant_algo": "NVFP4", "group_size": 16}}}
    cks["MIXED"] = mixed
    for name, ck in cks.items():
        # drop the big plain tensors from the seeds
        for k in [k for k in ck.tensors if k.startswith(("model.embed", "lm_head"))]:
            del ck.tensors[k]
        with tempfile.TemporaryDirectory() as d:
            ck.write(d)
            shard = (Path(d) / "model.safetensors").read_bytes()
            cfg = (Path(d) / "hf_quant_config.json").read_bytes()
        (corpus / "shard" / f"{name}.safetensors").write_bytes(shard)
        (corpus / "header" / f"{name}.raw").write_bytes(b"\x01" + shard)
        (n,) = struct.unpack("<Q", shard[:8])
        (corpus / "header" / f"{name}.json").write_bytes(b"\x00" + shard[8 : 8 + n])
        cfg = json.dumps(json.loads(cfg), separators=(",", ":")).encode()
        (corpus / "checkpoint" / f"{name}.bin").write_bytes(struct.pack("<H", len(cfg)) + cfg + shard)
    # a few hand-made edge cases
    (corpus / "header" / "empty.raw").write_bytes(b"\x01" + st.raw_bytes({}))
    (corpus / "header" / "meta.json").write_bytes(b"\x00" + st.header_text({"__metadata__": {"a": "b"}}))
    print(f"seeds written under {corpus}")


if __name__ == "__main__":
    main()
