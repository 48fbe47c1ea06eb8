"""``device_map``: accelerate places motensor's model across devices and the CPU.

On the CPU-only CI: explicit dicts (every decoder layer its own entry, all on ``"cpu"``) and
``"auto"`` with a ``max_memory`` budget give the same logits as the plain model, the placement is
recorded in ``hf_device_map``, ``"auto"`` sizes the quantized modules by their real (4-bit)
bytes, and bad maps are refused. With a GPU (``-m gpu``): layers split between ``cuda:0`` and the
CPU, each running there.
"""
from __future__ import annotations

import pytest
import torch

import motensor
from helpers.fixtures import DATA
from motensor.errors import ArgumentError

CKPT = DATA / "llama-nvfp4"


def _ids():
    return torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference():
    model = motensor.from_pretrained(CKPT, device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        return model(_ids()).logits


def _layer_map(model_or_n: int, last: str = "cpu") -> dict:
    m = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": last}
    for i in range(model_or_n):
        m[f"model.layers.{i}"] = "cpu"
    return m


def test_dict_device_map_on_cpu(reference):
    model = motensor.from_pretrained(CKPT, dtype=torch.float32, device_map=_layer_map(2))
    assert model.hf_device_map["model.layers.1"] == "cpu"
    assert isinstance(model.model.layers[0].self_attn.q_proj, motensor.QuantLinear)
    with torch.inference_mode():
        assert torch.equal(model(_ids()).logits, reference)


def test_auto_device_map_with_max_memory(reference):
    model = motensor.from_pretrained(CKPT, dtype=torch.float32, device_map="auto", max_memory={"cpu": "1GiB"})
    assert set(model.hf_device_map.values()) == {"cpu"}
    with torch.inference_mode():
        assert torch.equal(model(_ids()).logits, reference)


def test_auto_sizes_quantized_modules_by_their_bytes():
    from accelerate.utils import compute_module_sizes

    model = motensor.from_pretrained(CKPT, device="cpu", dtype=torch.float32)
    sizes = compute_module_sizes(model)
    q = model.model.layers[0].mlp.down_proj
    assert isinstance(q, motensor.QuantLinear)
    # NVFP4: 4 bits per weight plus one E4M3 scale per 16, far below the fp32 Linear's 32 bits.
    assert sizes["model.layers.0.mlp.down_proj"] < q.in_features * q.out_features * 4 / 6


def test_bad_device_maps_are_refused():
    with pytest.raises(ArgumentError, match="does not have"):
        motensor.from_pretrained(CKPT, dtype=torch.float32, device_map={**_layer_map(2), "model.nope": "cpu"})
    with pytest.raises(ArgumentError, match="disk"):
        motensor.from_pretrained(CKPT, dtype=torch.float32, device_map=_layer_map(2, last="disk"))
    with pytest.raises(ArgumentError, match="expected one of"):
        motensor.from_pretrained(CKPT, dtype=torch.float32, device_map="everywhere")


@pytest.mark.gpu
def test_layers_split_between_gpu_and_cpu(reference):
    m = _layer_map(2)
    m["model.layers.0"] = 0
    m["model.embed_tokens"] = 0
    model = motensor.from_pretrained(CKPT, dtype=torch.float32, device_map=m)
    assert model.model.layers[0].self_attn.q_proj.weight.device.type == "cuda"
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "cpu"
    with torch.inference_mode():
        got = model(_ids()).logits.cpu()
    # GPU kernels accumulate in another order than the CPU reference.
    assert (got - reference).abs().max().item() <= 1e-2 * reference.abs().max().item()
