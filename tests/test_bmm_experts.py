"""Real ModelOpt exports of Llama 4 (experts quantized in place as 3-D parameters) and DeepSeek-V3.

``llama4-nvfp4``, ``llama4-fp8`` and ``deepseekv3-nvfp4`` were written by nvidia-modelopt 0.47.0
(tests/data/make_fixtures_035.py run in the 0.47 venv); ``refused/llama4-nvfp4-modelopt035`` by 0.35.1,
whose BMM export writes a stale ``weight_scale`` (see ``test_modelopt035_stale_bmm_scale``).
Their logit references (``references/<fixture>.json``) are checked in tests/test_models.py like
every other export: ModelOpt's fake-quant model re-balanced as the export does
(``prepare_like_export``), which motensor matches bit for bit for NVFP4 (Llama 4, DeepSeek-V3).
Here: the expert weights against ModelOpt's fake-quant weights, and the models built and run.
"""
from __future__ import annotations

import pytest
import torch

import motensor
from helpers.fixtures import DATA

REAL = ["llama4-nvfp4", "llama4-fp8", "deepseekv3-nvfp4"]
pytestmark = pytest.mark.skipif(not all((DATA / f).is_dir() for f in REAL), reason="fixtures missing")
GU0 = "model.layers.0.feed_forward.experts.gate_up_proj"


@pytest.mark.parametrize("name", REAL)
def test_open_and_inspect(name):
    ck = motensor.open(DATA / name)
    text = ck.summary()
    bmm = [m for m in ck.modules.values() if m.bmm]
    if name.startswith("llama4"):
        # 2 layers x (gate_up_proj, down_proj), described like stacked Linears [E, N, K]
        assert sorted(m.name.rsplit(".", 1)[1] for m in bmm) == ["down_proj", "down_proj", "gate_up_proj", "gate_up_proj"]
        gu = ck.modules[GU0]
        assert (gu.lead, gu.n, gu.k) == ((4, ), 128, 128)
        dn = ck.modules[GU0.replace("gate_up_proj", "down_proj")]
        assert (dn.lead, dn.n, dn.k) == ((4, ), 128, 64)
        assert "in-place experts" in text
    else:
        assert not bmm
        names = set(ck.modules)
        for leaf in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"):
            assert f"model.layers.0.self_attn.{leaf}" in names
        assert "model.layers.1.mlp.experts.3.down_proj" in names
        assert "model.layers.1.mlp.shared_experts.gate_proj" in names


def test_bmm_dequantize_equals_modelopt_fake_quant_weight():
    """The in-place NVFP4 experts dequantize to exactly ModelOpt 0.47's fake-quant weight
    (``_transposed_quantize(gate_up_proj, gate_up_proj_weight_quantizer)``, bf16, saved when the
    fixture was made)."""
    from safetensors.torch import load_file

    want = load_file(str(DATA / "references" / "llama4-nvfp4-bmm-weights.safetensors"))[GU0].float()
    ck = motensor.open(DATA / "llama4-nvfp4")
    got = ck.dequantize(GU0).transpose(1, 2)  # [E, N, K] -> the parameter's [E, K, N]
    assert got.shape == want.shape == (4, 128, 128)
    assert torch.equal(got.to(torch.bfloat16).float(), want)


@pytest.mark.parametrize("name", ["llama4-nvfp4", "llama4-fp8"])
def test_bmm_load_is_the_stacked_linear_layout(name):
    ck = motensor.open(DATA / name)
    loaded = motensor.load(ck, device="cpu", modules=[GU0])
    w = loaded[GU0]["weight"]
    stored = ck.tensor(GU0)
    assert torch.equal(w.view(torch.uint8), stored.view(torch.uint8).transpose(1, 2).contiguous())
    if "weight_scale" in loaded[GU0] and loaded[GU0]["weight_scale"].dim() == 3:
        assert torch.equal(loaded[GU0]["weight_scale"].view(torch.uint8),
                           ck.tensor(GU0 + "_weight_scale").view(torch.uint8))


@pytest.mark.parametrize("name", REAL)
def test_from_pretrained_runs_and_generates(name):
    from motensor.models import QuantExperts
    from motensor.nn import QuantLinear

    m = motensor.from_pretrained(DATA / name, device="cpu")
    ck = motensor.open(DATA / name)
    mods = dict(m.named_modules())
    for n in ck.modules:
        if ".experts." in n:
            assert isinstance(mods[n.split(".experts.")[0] + ".experts"], QuantExperts), n
        else:
            assert isinstance(mods[n], QuantLinear), n
    ids = torch.tensor([[5, 17, 200, 33, 90, 128, 7, 64]])
    with torch.no_grad():
        logits = m(ids).logits
    assert torch.isfinite(logits).all()
    out = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (1, 12)


def test_modelopt035_stale_bmm_scale_is_refused_naming_the_module():
    """nvidia-modelopt 0.35.1 registers a BMM expert's NVFP4 scale before transposing the parameter
    ([E, K, N/16]) and packs the weight with K-block scales it never writes: named, not loaded wrongly."""
    d = DATA / "refused" / "llama4-nvfp4-modelopt035"
    if not d.is_dir():
        pytest.skip("no 0.35 export")
    with pytest.raises(motensor.FormatError, match=r"experts\.(down|gate_up)_proj.*0\.35") as e:
        motensor.open(d)
    assert "_weight_scale" in str(e.value)
