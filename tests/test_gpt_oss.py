"""gpt-oss (``GptOssForCausalLM``) exported by the real nvidia-modelopt 0.47.0 (tests/data/make_fixtures_gpt_oss.py).

ModelOpt quantizes gpt-oss's experts in place, like Llama 4's: ``mlp.experts.gate_up_proj``
``[E, H, 2I]`` (NVFP4: U8 ``[E, H/2, 2I]``) with ``_weight_scale`` / ``_weight_scale_2`` /
``_input_scale``, plus plain bf16 expert biases ``gate_up_proj_bias [E, 2I]`` / ``down_proj_bias
[E, H]``; gate and up columns interleaved; gpt-oss's clamped SwiGLU. tests/test_models.py checks
both fixtures' logits and teacher-forced greedy tokens against ModelOpt's fake-quant model (its
per-format tolerances; measured 0.50% NVFP4, 5.36% FP8 on the 2-core AMD EPYC box) and that every
quantized module was installed; here: inspect, dequantize, the experts module itself, that the
tolerance would catch a wrong gate/up split or dropped biases, real ``generate()``, the AutoModel
path, and the refusals.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import motensor
from helpers.fixtures import DATA
from test_models import LOGIT_TOL, near_tie, reference

NAMES = ["gpt_oss-nvfp4", "gpt_oss-fp8"]
pytestmark = pytest.mark.skipif(not all((DATA / n / "config.json").is_file() for n in NAMES),
                                reason="gpt-oss fixtures missing")
GU0 = "model.layers.0.mlp.experts.gate_up_proj"
DN0 = "model.layers.0.mlp.experts.down_proj"
E, H, INTER = 4, 128, 96  # the fixture's experts, hidden size, expert intermediate size


def _model(name: str, **kw):
    return motensor.from_pretrained(DATA / name, device="cpu", dtype=torch.bfloat16, check_architecture=False, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_open_and_inspect_describe_the_in_place_experts_with_biases(name, capsys):
    from motensor.cli import main

    ck = motensor.open(DATA / name)
    gu, dn = ck.modules[GU0], ck.modules[DN0]
    assert gu.bmm and dn.bmm
    assert (gu.lead, gu.n, gu.k) == ((E,), 2 * INTER, H) and (dn.lead, dn.n, dn.k) == ((E,), H, INTER)
    assert "bias" in gu.tensors and "bias" in dn.tensors
    assert "model.layers.0.mlp.router" in ck.quant_config.exclude_modules
    assert main(["inspect", str(DATA / name)]) == 0
    out = capsys.readouterr().out
    assert GU0 in out and "in-place experts" in out and "bias" in out


def test_dequantize_equals_modelopt_fake_quant_weight():
    """``_transposed_quantize(gate_up_proj, its weight quantizer)`` on ModelOpt's model, saved with
    the fixture, bit for bit (the fixture's ``bmm_dequant_check`` says the same of every in-place
    parameter of both exports)."""
    meta, ref = reference("gpt_oss-nvfp4")
    want = ref[f"weights.{GU0}"].float()  # [E, K, N] as the parameter
    got = motensor.open(DATA / "gpt_oss-nvfp4").dequantize(GU0).transpose(1, 2)
    assert got.shape == want.shape == (E, H, 2 * INTER)
    assert torch.equal(got.to(torch.bfloat16).float(), want)
    for n in NAMES:
        checks = reference(n)[0]["bmm_dequant_check"]
        assert len(checks) == 4 and all(c["max_abs_after_bf16_rounding"] == 0 for c in checks.values()), n


@pytest.mark.parametrize("name", NAMES)
def test_experts_module_holds_the_checkpoint(name):
    """One fused gate_up QuantLinear per expert (views of the loaded tensors: [2I, H]) and the
    biases exactly as stored."""
    from motensor.models import FusedGateUpQuantExperts
    from motensor.nn import QuantLinear

    m = _model(name)
    ck = motensor.open(DATA / name)
    ex = m.model.layers[0].mlp.experts
    assert isinstance(ex, FusedGateUpQuantExperts)
    assert all(isinstance(x, QuantLinear) and x.bias is None for x in list(ex.gate_up) + list(ex.down))
    assert (ex.gate_up[0].out_features, ex.gate_up[0].in_features) == (2 * INTER, H)
    assert (ex.down[0].out_features, ex.down[0].in_features) == (H, INTER)
    assert torch.equal(ex.gate_up_proj_bias, ck.tensor(GU0 + "_bias"))
    assert torch.equal(ex.down_proj_bias, ck.tensor(DN0 + "_bias"))
    # Expert 1's gate_up weight, as the model computes with it (bf16), is the checkpoint's expert 1:
    # no re-ordering of rows (the fp32 dequants may differ in the last bit by the order of the scale
    # products, as for every QuantLinear).
    assert torch.equal(ex.gate_up[1].dequantize(torch.bfloat16), ck.dequantize(GU0)[1].to(torch.bfloat16))
    assert ex.gate_up[0].weight.untyped_storage().data_ptr() == ex.gate_up[3].weight.untyped_storage().data_ptr()


def _routing():
    """7 tokens, top-2, every expert hit, one pair routed to transformers' "no expert" slot (id E)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(7, H, generator=g).to(torch.bfloat16)
    ids = torch.tensor([[0, 1], [3, 2], [1, E], [2, 0], [3, 1], [0, 2], [2, 3]])
    w = torch.rand(7, 2, generator=g).to(torch.bfloat16)
    return x, ids, w


def test_grouped_path_equals_the_loop():
    """NVFP4 gpt-oss experts run grouped (two grouped products over all routed pairs, the expert
    biases added around them, the routing weight after the down bias): equal to the loop. On a CPU
    the grouped op is its loop reference, so this checks the bias / gate / routing / "no expert"
    handling around it, bit for bit; the kernel itself on the fused gate_up is checked below."""
    m = _model("gpt_oss-nvfp4", moe_mode="loop")
    ex = m.model.layers[0].mlp.experts
    assert ex._grouped_why_not is None
    x, ids, w = _routing()
    assert ex._auto_mode(x) == "loop"  # CPU: auto keeps the loop
    with torch.no_grad():
        loop = ex(x, ids, w)
        ex.mode = "grouped"
        grouped = ex(x, ids, w)
    assert torch.equal(grouped, loop)
    seq = torch.tensor([[5, 17, 200, 33, 90, 128, 7, 64]])
    with torch.no_grad():
        ex.mode = "loop"
        want = m(seq).logits
        for layer in m.model.layers:
            layer.mlp.experts.mode = "grouped"
        assert torch.equal(m(seq).logits, want)


def test_grouped_kernel_on_the_fused_gate_up():
    """The grouped Triton kernel (the interpreter on a CPU) on the fixture's stacked gate_up
    ``[E, 2I, H/2]`` (views of the loaded experts) equals its loop reference within the kernel
    tests' fp16 bound (fp16 activations: the interpreter cannot run bf16 dots, see
    tests/kernels/test_moe_grouped.py; on a GPU the kernel tests cover bf16)."""
    pytest.importorskip("triton")
    from motensor.kernels import moe_w4a16
    from motensor.kernels import reference as R

    ex = _model("gpt_oss-nvfp4").model.layers[1].mlp.experts
    st = ex.grouped_tensors()["gate_up"]
    assert st["qweight"].shape == (E, 2 * INTER, H // 2)
    x, ids, _ = _routing()
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU tensors run under the interpreter (tests/conftest.py)
    args = tuple(t.to(dev) for t in (x.to(torch.float16), ids))
    args += (None, *(t.to(dev) for t in (st["qweight"], st["scales"], st["global_scale"])))
    kw = dict(element=st["element"], scale_kind=st["scale_kind"], group_size=st["group_size"])
    got = moe_w4a16.moe_w4a16_gemm(*args, **kw).float()
    want = R.moe_w4a16_gemm(*args, **kw).float()
    assert want.abs().max() > 0 and not got[5].any()  # pair 5 (token 2, slot 1) is the "no expert" slot
    assert (got - want).norm() <= 2e-3 * want.norm()


def test_grouped_refused_for_fp8_experts():
    from motensor.errors import ArgumentError

    ex = _model("gpt_oss-fp8").model.layers[0].mlp.experts
    assert "FP8" in str(ex._grouped_why_not)
    x, ids, w = _routing()
    ex.mode = "grouped"
    with pytest.raises(ArgumentError, match="grouped"):
        ex(x, ids, w)


def _logit_error(m, name: str) -> float:
    _, ref = reference(name)
    with torch.no_grad():
        logits = m(ref["model.input_ids"]).logits.float()
    want = ref["model.logits"]
    return (logits - want).abs().max().item() / want.abs().max().item()


def test_tolerance_catches_a_wrong_gate_up_split_or_dropped_biases():
    """The logit comparison of tests/test_models.py would fail if the interleaved gate/up columns
    were split as concatenated halves (Llama 4 / Qwen style), or if the expert biases were left out:
    each moves the logits by many times the NVFP4 tolerance."""
    name = "gpt_oss-nvfp4"
    tol = LOGIT_TOL["NVFP4"]
    m = _model(name)
    assert _logit_error(m, name) <= tol
    experts = [mod.mlp.experts for mod in m.model.layers]
    own = [ex.gate_fn for ex in experts]
    for ex in experts:
        # the same clamped SwiGLU, applied to concatenated halves instead of interleaved columns
        ex.gate_fn = lambda gu, f=ex.gate_fn: f(gu.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2))
    assert _logit_error(m, name) > 5 * tol
    for ex, f in zip(experts, own):
        ex.gate_fn = f
        ex.gate_up_proj_bias = None
        ex.down_proj_bias = None
    assert _logit_error(m, name) > 5 * tol


def test_loop_and_dense_agree():
    m = _model("gpt_oss-nvfp4", moe_mode="loop")
    ids = torch.tensor([[5, 17, 200, 33, 90, 128, 7, 64, 3, 250]])
    with torch.no_grad():
        loop = m(ids).logits.float()
        for layer in m.model.layers:
            layer.mlp.experts.mode = "dense"
        dense = m(ids).logits.float()
    # Same products; the dense sum adds the experts' outputs in a different order (bf16 rounding).
    assert (dense - loop).abs().max().item() <= LOGIT_TOL["NVFP4"] * loop.abs().max().item()


def test_generate_matches_modelopt_greedy():
    """The real ``generate()`` (KV cache, past layer 0's sliding window of 8) continues ModelOpt's
    greedy sequence as ModelOpt did, over the first run of at least 4 decided steps (top-2 margin
    above ``near_tie`` of the measured logit error): a random-weight model's first greedy step is
    an exact bf16 tie here, so generation starts from ModelOpt's prefix up to that run (a tie may
    go either way; after it the continuations would legitimately differ). The cached decode also
    agrees with a full forward over everything it generated."""
    name = "gpt_oss-nvfp4"
    _, ref = reference(name)
    m = _model(name)
    ids, seq, margin = ref["model.input_ids"], ref["model.greedy"], ref["model.top2_margin"]
    n = ids.shape[1]
    scale = ref["model.logits"].abs().max().item()
    with torch.no_grad():
        err = (m(ids).logits.float() - ref["model.logits"]).abs().max().item()
    decided = (margin > near_tie(err, scale)).tolist() + [False]
    start, run = next((s, r) for s in range(len(margin))
                      for r in [next(j for j in range(s, len(decided)) if not decided[j]) - s] if r >= 4)
    prompt = seq[:, : n + start]
    with torch.no_grad():
        out = m.generate(prompt, max_new_tokens=seq.shape[1] - prompt.shape[1], do_sample=False, pad_token_id=0,
                         eos_token_id=None)
        again = m(out).logits.float()[0, n - 1: -1]
    k = n + start
    assert torch.equal(out[0, k: k + run], seq[0, k: k + run]), (start, out[0, k:k + run].tolist(), seq[0, k:k + run].tolist())
    top2 = again.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > near_tie(0.0, scale)
    differs = (again.argmax(-1) != out[0, n:]) & clear
    assert not differs.any(), differs.nonzero().flatten().tolist()


def test_automodel_path_equals_from_pretrained():
    from transformers import AutoModelForCausalLM

    name = "gpt_oss-fp8"
    a = AutoModelForCausalLM.from_pretrained(DATA / name, device_map="cpu")
    b = _model(name)
    assert type(a.model.layers[1].mlp.experts) is type(b.model.layers[1].mlp.experts)
    ids = torch.tensor([[5, 17, 200, 33, 90, 128, 7, 64]])
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_missing_expert_bias_is_named(tmp_path):
    """A gpt-oss checkpoint without the expert biases its model declares: refused naming the module."""
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(DATA / "gpt_oss-fp8", tmp_path / "nobias")
    st = load_file(str(d / "model.safetensors"))
    st = {k: v for k, v in st.items() if not k.endswith("experts.down_proj_bias")}
    save_file(st, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert json.loads((d / "config.json").read_text())["architectures"] == ["GptOssForCausalLM"]
    with pytest.raises(motensor.FormatError, match=r"model\.layers\.0\.mlp\.experts.*down_proj_bias"):
        motensor.from_pretrained(d, device="cpu", check_architecture=False)
