"""PEFT LoRA on a ModelOpt checkpoint (motensor.lora): training, saving, checkpointing, autocast.

Runs on tests/data/llama-nvfp4 (NVFP4 W4A4: the activation quantizer's straight-through gradient
is on the path) in fp32, the fastest CPU dtype; bf16 is covered by autocast.
"""
from __future__ import annotations

import pytest
import torch

import motensor
from helpers.fixtures import DATA

peft = pytest.importorskip("peft")
import motensor.lora as mlora  # noqa: E402
from motensor.nn import QuantLinear  # noqa: E402

FIXTURE = DATA / "llama-nvfp4"
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep.")


def _model(dtype=torch.float32):
    return motensor.from_pretrained(FIXTURE, dtype=dtype, device="cpu")


def _batch():
    tok = motensor.load_tokenizer(FIXTURE)
    ids = tok(TEXT, return_tensors="pt").input_ids[:, :48]
    return torch.cat([ids, ids.flip(1)], 0)


def _config(**kw):
    return peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", **kw)


def _quant_bytes(model):
    return {n: b.clone() for n, b in model.named_buffers() if ".lora_" not in n and b.dtype in
            (torch.uint8, torch.float8_e4m3fn, torch.int8)}


def _train(pm, ids, steps, lr=1e-2):
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_lowers_loss_with_quantized_bytes_unchanged(tmp_path):
    torch.manual_seed(0)
    model = _model()
    before = _quant_bytes(model)
    assert before
    pm = mlora.get_peft_model(model, _config())
    wrapped = [m for m in pm.modules() if isinstance(m, mlora.QuantLoraLinear)]
    assert len(wrapped) == sum(isinstance(m, QuantLinear) for m in pm.modules()) == 14
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    ids = _batch()
    losses = _train(pm, ids, steps=30)
    assert losses[-1] < 0.6 * losses[0], losses
    after = _quant_bytes(pm)
    assert before.keys() == {k.replace("base_model.model.", "", 1).replace(".base_layer", "") for k in after}
    for k, v in after.items():
        key = k.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(v, before[key]), k

    # Save the adapter only, reload it onto a freshly loaded model: same logits.
    pm.eval()
    with torch.no_grad():
        want = pm(input_ids=ids).logits
    pm.save_pretrained(tmp_path / "adapter")
    saved = list((tmp_path / "adapter").iterdir())
    assert any(p.name == "adapter_model.safetensors" for p in saved)
    assert sum(p.stat().st_size for p in saved) < 1_000_000  # the adapter, not the model
    reloaded = mlora.load_adapter(_model(), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # Merging into the quantized weight is refused, with a message that says what to do instead.
    with pytest.raises(mlora.LoraMergeError, match="unmerged"):
        reloaded.merge_and_unload()


def _lora_grads(pm, ids):
    pm.zero_grad()
    loss = pm(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    torch.manual_seed(0)
    ids = _batch()
    model = _model()
    if reentrant:
        # The QLoRA recipe: prepare_model_for_kbit_training freezes the base, upcasts, and (with the
        # reentrant checkpoint) makes the embeddings' output require grad.
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.enable_input_require_grads()
    pm = mlora.get_peft_model(model, _config(init_lora_weights=False))
    pm.train()
    loss0, g0 = _lora_grads(pm, ids)
    pm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    loss1, g1 = _lora_grads(pm, ids)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)
        assert g0[k].abs().sum() > 0, k


def test_prepare_model_for_kbit_training_then_lora_trains():
    model = peft.prepare_model_for_kbit_training(_model(torch.bfloat16))
    pm = mlora.get_peft_model(model, _config(init_lora_weights=False))
    losses = _train(pm, _batch()[:1, :24], steps=3, lr=1e-2)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_bf16_autocast():
    torch.manual_seed(0)
    pm = mlora.get_peft_model(_model(), _config(init_lora_weights=False))
    ids = _batch()[:1, :24]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pm(input_ids=ids, labels=ids)
        q = next(m for m in pm.modules() if isinstance(m, QuantLinear))
        assert q(torch.randn(2, q.in_features)).dtype == torch.bfloat16  # runs in the autocast dtype
    out.loss.backward()
    grads = [p.grad for p in pm.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_lora_on_quantized_experts():
    fixture = DATA / "qwen3moe-nvfp4"
    model = motensor.from_pretrained(fixture, dtype=torch.float32, device="cpu")
    experts = [n for n, m in model.named_modules() if isinstance(m, QuantLinear) and ".experts." in n]
    config = peft.LoraConfig(r=4, target_modules=experts, init_lora_weights=False)
    pm = mlora.get_peft_model(model, config)
    n_experts = sum(isinstance(m, mlora.QuantLoraLinear) for m in pm.modules())
    assert n_experts > 0
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    pm(input_ids=ids, labels=ids).loss.backward()
    got = [p.grad for n, p in pm.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0]
    assert got, "no expert adapter received a gradient"


def test_dora_and_weight_rewriting_inits_are_refused():
    with pytest.raises(ValueError, match="full-precision base weight"):
        mlora.get_peft_model(_model(), _config(use_dora=True))
    with pytest.raises(ValueError, match="full-precision base weight"):
        mlora.get_peft_model(_model(), _config(init_lora_weights="pissa"))
