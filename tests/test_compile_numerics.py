"""torch.compile vs eager on a quantized model (motensor/compile_numerics.py).

A plain transformers bf16 model's logits move by up to 0.125-0.25 under inductor on the CPU
(llama-bf16: 0.25 measured here, 0.125 in the issue); llama-nvfp4 (NVFP4 W4A4) moved by 4.0
before QuantLinear turned on inductor's eager-cast emulation, and by 0.0 after. The bound is the
plain model's gap.
"""
from __future__ import annotations

import torch

import motensor
from helpers.fixtures import DATA

PLAIN_MODEL_GAP = 0.25


def test_inductor_logits_match_eager_within_plain_model_gap():
    torch.manual_seed(0)
    m = motensor.from_pretrained(DATA / "llama-nvfp4", dtype=torch.bfloat16, device="cpu").eval()
    ids = torch.randint(0, m.config.vocab_size, (1, 16))
    with torch.no_grad():
        eager = m(ids).logits.float()
        compiled = torch.compile(m, backend="inductor")(ids).logits.float()
    diff = (eager - compiled).abs().max().item()
    assert diff <= PLAIN_MODEL_GAP, f"compiled logits differ from eager by {diff}"


def test_backward_formulas_trace_under_compile():
    """The autograd formulas are traceable (aot_eager): compiled gradients equal eager's."""
    q = motensor.QuantLinear.from_float(torch.nn.Linear(64, 32), "NVFP4", input_amax=2.0)
    x = torch.randn(4, 64)
    grads = []
    for fn in (q, torch.compile(q, backend="aot_eager", fullgraph=True)):
        xi = x.clone().requires_grad_()
        fn(xi).square().sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
