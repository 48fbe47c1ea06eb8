"""Backward through every QuantLinear format (motensor/autograd.py).

The input gradient of a QuantLinear must equal the gradient of ``F.linear(q(x), W)`` with ``W``
the module's dequantized weight (``QuantLinear.dequantize()``, ModelOpt's fake-quant weight) and
``q`` the straight-through estimator of the activation quantizer (identity, zeroed where a static
FP8 / INT8 quantizer clips). Tolerances (relative Frobenius error of the gradient), per format:

- fp32: 1e-5 where the forward multiplies with exactly ``dequantize()`` (every format but two);
  W4A8_AWQ and W4A8_NVFP4_FP8 multiply with the FP8 re-rounding of that weight (the FP8 operand
  of their GEMM, FORMATS §4.6b/§4.8), which moves the gradient by that rounding: measured 8.8e-3
  and 2.0e-2 on the fixtures, 3.05e-2 for W4A8_NVFP4_FP8 on a random weight; bounds 1.5e-2, 5e-2;
- bf16: the gradient and the dense weight operand are rounded to bf16 as in any bf16 Linear
  (measured <= 3.0e-3): 6e-3, plus the FP8 re-rounding above for the W4A8 formats.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import motensor
from helpers.fixtures import fixture_dirs
from motensor.formats import Activation
from motensor.autograd import INT8_QMAX, INT8_QMIN, FrozenWeightError
from motensor.kernels import reference as ref
from motensor.nn import QuantLinear

FP32_TOL = {"W4A8_AWQ": 1.5e-2, "W4A8_NVFP4_FP8": 5e-2}
BF16_TOL = {"W4A8_AWQ": 2e-2, "W4A8_NVFP4_FP8": 5.5e-2}


def _tolerance(fmt: str, dtype: torch.dtype) -> float:
    if dtype == torch.float32:
        return FP32_TOL.get(fmt, 1e-5)
    return BF16_TOL.get(fmt, 6e-3)


def _static_range(m: QuantLinear):
    """The clipping range of the module's static activation quantizer (None if dynamic)."""
    if m.input_scale is None:
        return None
    if m.format.activation is Activation.FP8_PER_TENSOR:
        return -ref.FP8_MAX, ref.FP8_MAX
    if m.format.activation is Activation.INT8_PER_TENSOR:
        return INT8_QMIN, INT8_QMAX
    return None  # NVFP4's input_scale is a global scale of a dynamic block quantizer: no clipping


def _reference_grads(m: QuantLinear, x: torch.Tensor, g: torch.Tensor):
    """(dx, dbias) of sum(g * F.linear(ste(x * pre_quant_scale), W) + b), W = m.dequantize()."""
    xr = x.detach().clone().requires_grad_()
    xs = xr * m.pre_quant_scale.to(x.dtype) if m.pre_quant_scale is not None else xr
    rng = _static_range(m)
    if rng is not None:
        r = xs.detach().float() / ref.scalar(m.input_scale)
        keep = (r >= rng[0]) & (r <= rng[1])
        xs = torch.where(keep, xs, xs.detach())  # clipped elements pass no gradient
    b = None if m.bias is None else m.bias.detach().float().requires_grad_()
    y = F.linear(xs.float(), m.dequantize(torch.float32), b)
    (y * g.float()).sum().backward()
    return xr.grad, (None if b is None else b.grad)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _one_fixture_per_format():
    seen, out = set(), []
    for d in fixture_dirs():
        qc = d / "hf_quant_config.json"
        if not qc.is_file():
            continue
        import json

        algo = json.loads(qc.read_text())["quantization"]["quant_algo"]
        if algo not in seen:
            seen.add(algo)
            out.append(d)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fixture", _one_fixture_per_format(), ids=lambda p: p.name)
def test_input_grad_equals_grad_through_dequantized_weight(fixture, dtype):
    loaded = motensor.load(fixture, device="cpu", progress=False)
    names = [n for n, lm in sorted(loaded.modules.items()) if not lm.info.lead][:3]
    assert names
    torch.manual_seed(0)
    for name in names:
        m = QuantLinear.from_loaded(loaded.modules[name])
        # Activations of the size a real layer sees, and some beyond a static quantizer's range.
        x = (torch.randn(2, 7, m.in_features) * 2).to(dtype).requires_grad_()
        g = torch.randn(2, 7, m.out_features).to(dtype)
        y = m(x)
        assert y.requires_grad and y.dtype == dtype
        (y.float() * g.float()).sum().backward()
        want, _ = _reference_grads(m, x, g)
        assert x.grad is not None and x.grad.dtype == dtype and x.grad.shape == x.shape
        rel = _rel(x.grad, want)
        tol = _tolerance(m.format.name, dtype)
        assert rel <= tol, f"{fixture.name} {name} ({m.format.name}, {dtype}): grad error {rel:.2e} > {tol:.0e}"
        # The quantized bytes are buffers that never receive a gradient.
        assert all(not t.requires_grad and t.grad is None for t in m.buffers())


@pytest.mark.parametrize("fmt", motensor.FORMAT_NAMES)
def test_bias_and_input_grad_every_format(fmt):
    """Every row of the format table (``from_float``), with a bias that is trained."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(256, 64, bias=True)
    pqs = torch.rand(256) + 0.5 if fmt == "W8A8_SQ_PER_CHANNEL" else None
    m = QuantLinear.from_float(lin, fmt, input_amax=3.0, pre_quant_scale=pqs)
    m.bias.requires_grad_()  # a bias is allowed to train (it is not quantized)
    x = (torch.randn(5, 256) * 1.5).requires_grad_()
    g = torch.randn(5, 64)
    (m(x) * g).sum().backward()
    want_dx, want_db = _reference_grads(m, x, g)
    assert _rel(x.grad, want_dx) <= _tolerance(fmt, torch.float32)
    torch.testing.assert_close(m.bias.grad, want_db, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.bias.grad, g.sum(0), rtol=1e-5, atol=1e-5)


def test_static_quantizer_clips_the_gradient():
    """FP8 per-tensor: elements beyond 448 * input_scale get no gradient (ModelOpt's clipped STE)."""
    m = QuantLinear.from_float(torch.nn.Linear(64, 32, bias=False), "FP8", input_amax=1.0)
    s = ref.scalar(m.input_scale).item()
    x = torch.full((1, 64), 0.5 * s * 448)
    x[0, :8] = 2 * s * 448  # saturated
    x.requires_grad_()
    m(x).sum().backward()
    assert torch.all(x.grad[0, :8] == 0)
    assert torch.all(x.grad[0, 8:] != 0)


@pytest.mark.parametrize("op", ["nvfp4", "mxfp8", "mxfp4", "fp8_dynamic"])
def test_dynamic_quantizers_pass_gradient_straight_through(op):
    from motensor import ops

    x = (torch.randn(3, 64) * 100).bfloat16().requires_grad_()
    g = torch.randn(3, 64).bfloat16()
    fn = {
        "nvfp4": lambda t: ops.nvfp4_fake_quant(t, torch.tensor(0.01), torch.float32),
        "mxfp8": lambda t: ops.mxfp8_fake_quant(t),
        "mxfp4": lambda t: ops.mxfp4_fake_quant(t),
        "fp8_dynamic": lambda t: ops.fp8_fake_quant(t, None),
    }[op]
    y = fn(x)
    (y.float() * g.float()).sum().backward()
    assert x.grad.dtype == x.dtype
    assert torch.equal(x.grad, g)


@pytest.mark.parametrize("role", ["weight_scale", "weight_scale_2", "input_scale"])
def test_gradient_of_frozen_quantized_tensors_is_refused(role):
    m = QuantLinear.from_float(torch.nn.Linear(64, 32), "NVFP4", input_amax=2.0)
    t = getattr(m, role)
    t.requires_grad_()  # a float tensor accepts requires_grad_; the forward must refuse it
    with pytest.raises(FrozenWeightError, match=role):
        m(torch.randn(2, 64))
    assert isinstance(FrozenWeightError("x"), motensor.MotensorError)


def test_no_grad_forward_keeps_working_and_needs_no_grad():
    m = QuantLinear.from_float(torch.nn.Linear(256, 32), "W4A16_AWQ")
    with torch.no_grad():
        y = m(torch.randn(2, 256))
    assert not y.requires_grad
