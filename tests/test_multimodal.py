"""Multimodal ``ForConditionalGeneration`` exports: the text side quantized, the vision side plain.

``gemma3mm-{nvfp4,w4a16_awq}`` (Gemma3ForConditionalGeneration, SigLIP tower),
``mistral3-{nvfp4,w4a16_awq}`` (Mistral3ForConditionalGeneration, Pixtral tower + patch merger) and
``llama4mm-nvfp4`` (Llama4ForConditionalGeneration, in-place quantized text experts) were written by
nvidia-modelopt 0.47.0 (tests/data/make_fixtures_mm.py): the stock configs leave the vision tower
and the projector unquantized, and the export stores them under their transformers 4 names
(``vision_tower.*``, ``multi_modal_projector.*``, text under ``language_model.model.*``). Their text
logits and greedy tokens are checked against ModelOpt's fake-quant model in tests/test_models.py;
here: the vision side equals the file, the AutoModel classes transformers routes these configs to,
and generation with an image.
"""
from __future__ import annotations

import pytest
import torch

import motensor
from helpers.fixtures import DATA

MM = {"gemma3mm-nvfp4": "Gemma3ForConditionalGeneration", "gemma3mm-w4a16_awq": "Gemma3ForConditionalGeneration",
      "mistral3-nvfp4": "Mistral3ForConditionalGeneration", "mistral3-w4a16_awq": "Mistral3ForConditionalGeneration",
      "llama4mm-nvfp4": "Llama4ForConditionalGeneration"}
VISION = ("vision_tower.", "vision_model.", "multi_modal_projector.")
pytestmark = pytest.mark.skipif(not all((DATA / f).is_dir() for f in MM), reason="fixtures missing")
IMAGE_TOKEN = 255  # tests/data/make_fixtures_mm.py
IMAGE_TOKENS = 4  # 56x56 pixels, 14x14 patches, merged / pooled / pixel-shuffled 2x2: 4 tokens each


def _vision_module(name: str) -> bool:
    return any(f".{p}" in f".{name}." for p in ("vision_tower.", "vision_model.", "multi_modal_projector."))


@pytest.mark.parametrize("name", sorted(MM))
def test_vision_side_is_plain_and_equals_the_file(name):
    from motensor.models.naming import renamer
    from motensor.nn import QuantLinear

    m = motensor.from_pretrained(DATA / name, device="cpu")
    assert type(m).__name__ == MM[name]
    ck = motensor.open(DATA / name)
    assert not [n for n in ck.modules if n.startswith(VISION)], "the export quantized the vision side"
    vision = [t for t in ck.tensor_names() if t.startswith(VISION)]
    assert vision
    rename = renamer(m)
    state = dict(m.named_parameters()) | dict(m.named_buffers())
    for t in vision:
        got = state[rename(t)]
        want = ck.tensor(t)
        assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want), t
    # Every vision/projector parameter of the model came from the file, and none is quantized.
    model_vision = {n for n, _ in m.named_parameters() if _vision_module(n)}
    assert model_vision == {rename(t) for t in vision}
    assert not [n for n, mod in m.named_modules() if _vision_module(n) and isinstance(mod, QuantLinear)]
    assert [n for n, mod in m.named_modules() if isinstance(mod, QuantLinear)]  # the text side is
    assert m.motensor_report.unused_tensors == []


def _image_inputs(name: str, m) -> dict:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, 250, (1, 12), generator=g)
    ids[0, 2: 2 + IMAGE_TOKENS] = IMAGE_TOKEN
    kw = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 56, 56, generator=g).to(torch.bfloat16)}
    if name.startswith("mistral3"):
        kw["image_sizes"] = torch.tensor([[56, 56]])
    if name.startswith("gemma3"):
        kw["token_type_ids"] = (ids == IMAGE_TOKEN).long()
    return kw


@pytest.mark.parametrize("name", sorted(MM))
def test_generate_with_an_image(name):
    """A greedy generate with pixel values runs, and the image reaches the text model: another
    image changes the logits, the same image does not."""
    m = motensor.from_pretrained(DATA / name, device="cpu")
    kw = _image_inputs(name, m)
    with torch.no_grad():
        out = m.generate(**kw, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        a = m(**kw).logits.float()
        b = m(**kw).logits.float()
        other = dict(kw, pixel_values=-kw["pixel_values"])
        c = m(**other).logits.float()
    assert out.shape == (1, kw["input_ids"].shape[1] + 6)
    assert torch.equal(out[:, : kw["input_ids"].shape[1]], kw["input_ids"])
    assert torch.isfinite(a).all() and torch.equal(a, b)
    assert (a - c).abs().max() > 0.01 * a.abs().max(), "the image does not reach the logits"


@pytest.mark.parametrize("name", sorted(MM))
def test_automodel_image_text_to_text(name):
    """``import motensor; AutoModelForImageTextToText.from_pretrained(path)`` builds the same model
    as ``motensor.from_pretrained`` (same class, same text logits bit for bit)."""
    from transformers import AutoModelForImageTextToText

    from motensor.nn import QuantLinear

    auto = AutoModelForImageTextToText.from_pretrained(DATA / name, device_map="cpu")
    m = motensor.from_pretrained(DATA / name, device="cpu")
    assert type(auto) is type(m)
    assert sum(isinstance(x, QuantLinear) for x in auto.modules()) == sum(isinstance(x, QuantLinear) for x in m.modules())
    ids = torch.randint(2, 250, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(auto(ids).logits, m(ids).logits)


def test_automodel_causal_lm_gemma3mm_is_the_conditional_generation_model():
    """transformers 5 routes AutoModelForCausalLM of a Gemma 3 multimodal config to
    Gemma3ForConditionalGeneration (test name carries "gemma3mm": skipped on transformers 5.17)."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(2, 250, (1, 10), generator=torch.Generator().manual_seed(4))
    g = AutoModelForCausalLM.from_pretrained(DATA / "gemma3mm-nvfp4", device_map="cpu")
    assert type(g).__name__ == "Gemma3ForConditionalGeneration"
    m = motensor.from_pretrained(DATA / "gemma3mm-nvfp4", device="cpu")
    with torch.no_grad():
        assert torch.equal(g(ids).logits, m(ids).logits)


def test_automodel_causal_lm_llama4mm_is_the_text_model():
    """transformers 5 routes AutoModelForCausalLM of a Llama 4 multimodal config to the text-only
    Llama4ForCausalLM, which reads the ``language_model.*`` tensors and leaves the vision ones (as
    transformers' loader does); it gives the conditional-generation model's text logits."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(2, 250, (1, 10), generator=torch.Generator().manual_seed(4))
    text = AutoModelForCausalLM.from_pretrained(DATA / "llama4mm-nvfp4", device_map="cpu")
    assert type(text).__name__ == "Llama4ForCausalLM"
    unused = text.motensor_report.unused_tensors
    assert unused and all(t.startswith(VISION) for t in unused)
    full = motensor.from_pretrained(DATA / "llama4mm-nvfp4", device="cpu")
    with torch.no_grad():
        assert torch.equal(text(ids).logits, full(ids).logits)
        out = text.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape == (1, 14)


@pytest.mark.parametrize("name", sorted(MM))
def test_inspect(name, capsys):
    """``motensor inspect`` lists the text side's quantized modules and counts the plain vision
    tensors with the other unquantized ones."""
    from motensor.cli import main

    assert main(["inspect", str(DATA / name)]) == 0
    out = capsys.readouterr().out
    ck = motensor.open(DATA / name)
    assert f"{len(ck.modules)} quantized modules" in out
    assert all(n.startswith("language_model.") for n in ck.modules)
    plain = {t.rsplit(".", 1)[0] for t in ck.tensor_names() if t.startswith(VISION) and t.count(".") > 1}
    assert plain and not [m for m in plain if f"{m} " in out]  # no vision module listed as quantized
    if name.startswith("llama4mm"):
        assert "(in-place experts)" in out
