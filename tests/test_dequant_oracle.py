"""The Rust dequantization against ModelOpt's own fake-quant weights, on every real fixture.

`tests/data/references/<fixture>.safetensors` holds, for the quantized Linears of layer 0, the
weight ModelOpt's fake-quant model computes with (`weights.<module>`, model dtype). The Rust core
must reproduce it bit for bit from the exported bytes (after rounding to the model dtype).

Some ModelOpt exports are not bit-identical to ModelOpt's own fake quant, and a loader can only
follow the exported bytes. Measured on ModelOpt 0.47 (fraction of weights that differ / largest
difference relative to the layer's max |W|), with the cause where it is known:
- FP8 3.5% / 0.073, FP8_PER_CHANNEL_PER_TOKEN 0.2% / 0.053, W8A16 0.04% / 0.008,
  W8A8_SQ_PER_CHANNEL 0.01% / 0.004, W4A16_AWQ 0.05% / 0.14: the export divides the bf16 weight
  by the scale in bf16 before rounding, the fake quant in fp32 (shared/FIXTURES.md trap 4), so a
  few codes land one step away;
- W4A8_AWQ 2.3% / 0.14: the same, plus the second (FP8) quantizer rounding on top;
- MXFP4, W4A8_MXFP4_FP8 0.5% / 0.17: the exporter's E8M0 exponent differs from the fake quant's
  for a few blocks (float log2 near powers of two);
- W4A8_NVFP4_FP8 65% / 0.23: the exporter computes the E4M3 block scales against
  weight_scale_2 = amax/448 (FORMATS 4.6b) while the fake quant rounds them at another
  magnitude, so most blocks get a different scale.
Bounds below are about 1.5-2x those measurements; every other format must match exactly.
"""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

import motensor
from helpers.fixtures import REFERENCES, fixture_dirs

# format -> (max fraction of differing weights, max |difference| / max |W|)
EXPORT_DIFFERS = {
    "FP8": (0.06, 0.10),
    "FP8_PER_CHANNEL_PER_TOKEN": (0.01, 0.10),
    "W8A16": (0.002, 0.02),
    "W8A8_SQ_PER_CHANNEL": (0.002, 0.02),
    "W4A16_AWQ": (0.002, 0.25),
    "W4A8_AWQ": (0.04, 0.25),
    "MXFP4": (0.01, 0.30),
    "W4A8_MXFP4_FP8": (0.01, 0.30),
    "W4A8_NVFP4_FP8": (0.80, 0.35),
}

# Quantized fixtures with references (the unquantized bf16 base model has no quantized weights).
def _reference_keys(d) -> list[str]:
    from safetensors import safe_open

    with safe_open(REFERENCES / f"{d.name}.safetensors", "pt") as f:
        return list(f.keys())


# Fixtures whose references hold ModelOpt's fake-quant weights (some hold model logits only:
# tests/test_models.py checks those).
FIXTURES = [
    d for d in fixture_dirs()
    if (REFERENCES / f"{d.name}.safetensors").is_file() and (d / "hf_quant_config.json").is_file()
    and any(k.startswith("weights.") for k in _reference_keys(d))
]


def _layer_key(name: str) -> str:
    """``...layers.N.rest``: checkpoint names (``language_model.model.layers...``) and the
    transformers module names the references use (``model.language_model.layers...``) agree there."""
    i = name.find("layers.")
    return name[i:] if i >= 0 else name


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_rust_dequant_equals_modelopt_fake_quant_weight(fixture):
    ckpt = motensor.open(fixture)
    refs = load_file(REFERENCES / f"{fixture.name}.safetensors")
    by_layer = {_layer_key(k[len("weights."):]): k for k in refs if k.startswith("weights.")}
    checked = 0
    for name, info in ckpt.modules.items():
        key = f"weights.{name}" if f"weights.{name}" in refs else by_layer.get(_layer_key(name))
        if key is None:
            continue
        want = refs[key]
        got = ckpt.dequantize(name).to(want.dtype)
        if info.bmm and got.dim() == 3 and got.shape != want.shape:
            want = want.transpose(-1, -2)  # ModelOpt's in-place experts are [E, K, N]; dequantize gives [E, N, K]
        assert got.shape == want.shape, name
        bounds = EXPORT_DIFFERS.get(info.quant_algo)
        if bounds is None:
            assert torch.equal(got, want), f"{name} ({info.quant_algo}): max diff {(got.float() - want.float()).abs().max():.3g}"
        else:
            diff = (got.float() - want.float()).abs()
            frac, rel = (diff > 0).float().mean().item(), (diff.max() / want.float().abs().max()).item()
            assert frac <= bounds[0], f"{name} ({info.quant_algo}): {frac:.2%} of weights differ"
            assert rel <= bounds[1], f"{name} ({info.quant_algo}): a difference of {rel:.3f} x max|W|"
        checked += 1
    assert checked == len([k for k in refs if k.startswith("weights.")]) > 0


def test_a_format_that_should_match_still_fails_on_one_flipped_code(tmp_path):
    """The exact comparison above can fail: flip one nibble of a real NVFP4 export."""
    import shutil

    from safetensors.torch import save_file

    src = next(d for d in FIXTURES if d.name == "llama-nvfp4")
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    refs = load_file(REFERENCES / f"{src.name}.safetensors")
    name = next(k for k in sorted(refs) if k.startswith("weights."))[len("weights."):]
    tensors[f"{name}.weight"][0, 0] ^= 0x01
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    got = motensor.open(dst).dequantize(name).bfloat16()
    want = refs[f"weights.{name}"]
    assert not torch.equal(got, want)


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_inspect_names_every_module_with_its_algorithm(fixture, capsys):
    from motensor.cli import main

    assert main(["inspect", str(fixture)]) == 0
    out = capsys.readouterr().out
    ckpt = motensor.open(fixture)
    q = ckpt.quant_config
    for name, info in ckpt.modules.items():
        line = next((ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name), None)
        assert line is not None, f"{name} missing from `motensor inspect`"
        assert line.split()[1] == info.quant_algo
        if q is not None and q.scheme == "single":
            assert info.quant_algo == q.format.name
        elif q is not None:
            assert info.quant_algo == q.quantized_layers[name]["quant_algo"].upper()
