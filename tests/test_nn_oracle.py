"""Every QuantLinear against ModelOpt's fake-quant module, on every real fixture.

For ~7 Linears per fixture, `tests/data/references/<fixture>.safetensors` holds the activation
ModelOpt's fake-quant model fed the layer (`layers.<m>.input`, bf16) and what the layer returned
(`layers.<m>.output`, bf16). The module built from `motensor.load` must return the same.

Tolerances are relative Frobenius errors, per format, with the reason:
- bf16 output rounding alone is ~2e-3 (ModelOpt computes in bf16; motensor in fp32, rounded
  once), so formats whose export equals the fake-quant weight bit for bit and whose activation
  quantization is emulated exactly get 6e-3;
- formats where ModelOpt's exported bytes differ from its own fake-quant weight (measured by
  tests/test_dequant_oracle.py and the fixtures' `dequant_check`) get the error that difference
  causes, plus the bf16 floor: FP8 per-tensor/per-channel (one FP8 step on ~3-10% of weights),
  INT4 AWQ (one INT4 step on ~0.03%), MXFP4 (one step on ~0.5%);
  W4A8_NVFP4_FP8 is the extreme case: ModelOpt's export rounds the E4M3 block scales at a
  different magnitude than its fake quant (weight_scale_2 = amax/448 on export), so 60% of the
  exported weights differ from the fake-quant weight by up to one block-scale step (~6%). With
  ModelOpt's own fake-quant weight the same activation emulation matches to 2.4e-3, so the
  difference is in the checkpoint, not in motensor's math;
- W4A8 formats also see FP8 activation codes flip where ModelOpt divides by input_scale in bf16.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import motensor
from conftest import REFERENCES, fixture_dirs
from motensor.nn import QuantLinear

TOLERANCE = {
    "FP8": 2.5e-2,
    "FP8_PER_CHANNEL_PER_TOKEN": 1.5e-2,
    "FP8_PB_WO": 6e-3,
    "NVFP4": 6e-3,
    "W4A16_NVFP4": 6e-3,
    "NVFP4_AWQ": 6e-3,
    "W4A8_NVFP4_FP8": 1e-1,
    "W4A16_AWQ": 1.5e-2,
    "W4A8_AWQ": 2.5e-2,
    "W8A8_SQ_PER_CHANNEL": 6e-3,
    "W8A16": 6e-3,
    "MXFP8": 6e-3,
    "MXFP4": 4e-2,
    "W4A8_MXFP4_FP8": 4e-2,
}


def _cases():
    out = []
    for d in fixture_dirs():
        ref = REFERENCES / f"{d.name}.safetensors"
        if (d / "hf_quant_config.json").is_file() and ref.is_file():
            out.append(d)
    return out


@pytest.fixture(scope="module")
def loaded_fixtures():
    return {}


@pytest.mark.parametrize("fixture", _cases(), ids=lambda p: p.name)
def test_modules_match_modelopt_fake_quant(fixture, loaded_fixtures):
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
