"""Every QuantLinear against ModelOpt's fake-quant module, on every real fixture.

For ~7 Linears per fixture, `tests/data/references/<fixture>.safetensors` holds the activation
ModelOpt's fake-quant model fed the layer (`layers.<m>.input`, bf16) and what the layer returned
(`layers.<m>.output`, bf16). The module built from `motensor.load` must return the same.

Tolerances are relative Frobenius errors, per format:
- where ModelOpt's export equals its fake-quant weight bit for bit (tests/test_dequant_oracle.py)
  the module reproduces ModelOpt exactly: the weight enters the product rounded to the model
  dtype as ModelOpt's does, and the activation quantizers are emulated bit for bit; 1e-3 leaves
  room only for fp32 summation order;
- elsewhere the exported bytes differ from the fake-quant weight (FP8, INT8 and INT4 codes one
  step off, MXFP4 exponents, W4A8_NVFP4_FP8 block scales: see that file) and the bound is about
  1.5x the error those differences cause on the fixtures (measured: FP8 1.9e-2, FP8_PC_PT 7e-3,
  W8A16 8e-4, W8A8_SQ 3.5e-3, W4A16_AWQ 1.1e-2, W4A8_AWQ 1.8e-2, MXFP4 2.8e-2, W4A8_MXFP4_FP8
  2.7e-2, W4A8_NVFP4_FP8 8.5e-2). With ModelOpt's own fake-quant weight in place of the exported
  one, the same activation emulation matches to bf16 rounding (checked for W4A8_NVFP4_FP8 and
  W4A8_MXFP4_FP8 while writing these tests), so the difference is in the checkpoints.
"""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from safetensors import safe_open

import motensor
from helpers.fixtures import REFERENCES, fixture_dirs
from motensor.nn import QuantLinear

EXACT = 1e-3
TOLERANCE = {
    "FP8": 3e-2,
    "FP8_PER_CHANNEL_PER_TOKEN": 1.2e-2,
    "FP8_PB_WO": EXACT,
    "NVFP4": EXACT,
    "W4A16_NVFP4": EXACT,
    "NVFP4_AWQ": EXACT,
    "W4A8_NVFP4_FP8": 0.13,
    "W4A16_AWQ": 1.7e-2,
    "W4A8_AWQ": 2.7e-2,
    "W8A8_SQ_PER_CHANNEL": 6e-3,
    "W8A16": 2e-3,
    "MXFP8": EXACT,
    "MXFP4": 4.2e-2,
    "W4A8_MXFP4_FP8": 4.2e-2,
}


def _cases():
    out = []
    for d in fixture_dirs():
        ref = REFERENCES / f"{d.name}.safetensors"
        if (d / "hf_quant_config.json").is_file() and ref.is_file():
            with safe_open(ref, "pt") as f:
                # Fixtures whose references hold per-layer inputs/outputs (some hold model logits
                # only: tests/test_models.py checks those).
                if any(k.startswith("layers.") and k.endswith(".input") for k in f.keys()):
                    out.append(d)
    return out


@pytest.mark.parametrize("fixture", _cases(), ids=lambda p: p.name)
def test_modules_match_modelopt_fake_quant(fixture):
    refs = load_file(REFERENCES / f"{fixture.name}.safetensors")
    loaded = motensor.load(fixture, device="cpu", progress=False)
    layers = sorted({k[len("layers."):-len(".input")] for k in refs if k.startswith("layers.") and k.endswith(".input")})
    assert layers
    checked = 0
    for name in layers:
        if name not in loaded.modules:  # excluded from quantization in this fixture
            continue
        module = QuantLinear.from_loaded(loaded.modules[name])
        x, want = refs[f"layers.{name}.input"], refs[f"layers.{name}.output"].float()
        got = module(x)
        assert got.dtype == x.dtype and got.shape == want.shape
        rel = ((got.float() - want).norm() / want.norm()).item()
        tol = TOLERANCE[module.format.name]
        assert rel <= tol, f"{name} ({module.format.name}): relative error {rel:.2e} > {tol:.0e}"
        checked += 1
    assert checked > 0
