"""transformers' front door (issue 11): ``AutoModelForCausalLM.from_pretrained`` on ModelOpt
checkpoints through motensor's quantizer, Hub ids through a hand-made offline HF cache,
``save_pretrained`` round trips, and transformers-style arguments.

Every fixture in tests/data is loaded both ways on the CPU; the two models must give the same
logits (same modules, same loaded bytes, same kernels: equal, not close) and the same module types.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import motensor
from helpers.fixtures import DATA, fixture_dirs
from motensor.errors import ArgumentError, ConfigError, ShardError

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText  # noqa: E402

from motensor.integrations.hf_quantizer import ModelOptConfig, ModelOptHfQuantizer  # noqa: E402

FIXTURES = fixture_dirs()
QUANTIZED = [p for p in FIXTURES if (p / "hf_quant_config.json").is_file()]
IDS = torch.tensor([[1, 5, 9, 42, 7, 3, 11, 2]])


def _ids(model) -> torch.Tensor:
    return IDS % model.config.get_text_config().vocab_size


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(_ids(model)).logits.float()


def _module_types(model) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules()}


# -- registration -------------------------------------------------------------------------------
def test_import_registers_the_modelopt_quantizer():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZATION_CONFIG_MAPPING["modelopt"] is ModelOptConfig
    assert AUTO_QUANTIZER_MAPPING["modelopt"] is ModelOptHfQuantizer
    assert motensor.ModelOptConfig is ModelOptConfig


# -- AutoModel == motensor.from_pretrained ------------------------------------------------------------
@pytest.mark.parametrize("path", QUANTIZED, ids=lambda p: p.name)
def test_automodel_equals_motensor(path: Path):
    ours = motensor.from_pretrained(path, device="cpu", progress=False)
    # Multimodal exports: the image-text class (AutoModelForCausalLM maps some of these configs to a
    # text-only class or to none; tests/test_multimodal.py covers that routing).
    multimodal = json.loads((path / "config.json").read_text())["architectures"][0].endswith("ForConditionalGeneration")
    auto_cls = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    auto = auto_cls.from_pretrained(path, device_map="cpu")
    assert auto.is_quantized and ours.is_quantized
    assert isinstance(auto.hf_quantizer, ModelOptHfQuantizer) and isinstance(ours.hf_quantizer, ModelOptHfQuantizer)
    assert isinstance(auto.config.quantization_config, ModelOptConfig)
    assert auto.config.quantization_config.to_dict() == ours.config.quantization_config.to_dict()
    assert _module_types(auto) == _module_types(ours)
    assert auto.dtype == ours.dtype == torch.bfloat16
    # The state dict is the model's own again after loading (the quantizer hid it from the loop).
    assert set(auto.state_dict()) == set(ours.state_dict())
    assert not any(t.device.type == "meta" for t in auto.state_dict().values())
    torch.testing.assert_close(_logits(auto), _logits(ours), rtol=0, atol=0)


def test_automodel_default_device_and_dtype_follow_transformers():
    path = DATA / "llama-nvfp4"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16)
    assert model.device.type == "cpu"  # transformers without device_map: the CPU
    assert model.model.embed_tokens.weight.dtype == torch.float16
    ours = motensor.from_pretrained(path, device="cpu", dtype="float16", progress=False)
    torch.testing.assert_close(_logits(model), _logits(ours), rtol=0, atol=0)


def test_automodel_takes_motensor_options_from_an_explicit_config():
    from motensor.models import QuantExperts

    model = AutoModelForCausalLM.from_pretrained(DATA / "mixtral-nvfp4", device_map="cpu",
                                                 quantization_config=ModelOptConfig(moe_mode="dense", progress=False))
    modes = {m.mode for m in model.modules() if isinstance(m, QuantExperts)}
    assert modes == {"dense"}
    assert model.config.quantization_config.quant_algo == "NVFP4"  # the checkpoint's, not the argument's


def test_automodel_refuses_several_devices():
    with pytest.raises(ArgumentError, match="2 devices"):
        AutoModelForCausalLM.from_pretrained(DATA / "llama-nvfp4", device_map={"model": "cpu", "lm_head": "cuda:0"})


def _without_quantization_config(src: Path, dst: Path) -> Path:
    """A copy of ``src`` as ModelOpt < 0.31 wrote it: no quantization_config in config.json."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["quantization_config"]
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_old_exporter_checkpoint_without_quant_method(tmp_path):
    old = _without_quantization_config(DATA / "llama-w4a16_awq", tmp_path / "old")
    ours = motensor.from_pretrained(old, device="cpu", progress=False)  # reads hf_quant_config.json
    assert ours.config.quantization_config.quant_algo == "W4A16_AWQ"
    auto = AutoModelForCausalLM.from_pretrained(old, quantization_config=ModelOptConfig())
    assert _module_types(auto) == _module_types(ours)
    torch.testing.assert_close(_logits(auto), _logits(ours), rtol=0, atol=0)


def test_modelopt_031_config_without_quant_method(tmp_path):
    """ModelOpt 0.31 wrote config.json's quantization_config without quant_method."""
    old = tmp_path / "v031"
    shutil.copytree(DATA / "llama-fp8", old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["quantization_config"].pop("quant_method")
    (old / "config.json").write_text(json.dumps(cfg))
    model = motensor.from_pretrained(old, device="cpu", progress=False)
    assert model.config.quantization_config.quant_algo == "FP8"
    assert model.config.quantization_config.to_dict()["quant_method"] == "modelopt"
    ref = motensor.from_pretrained(DATA / "llama-fp8", device="cpu", progress=False)
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)
    model.save_pretrained(tmp_path / "resaved")  # now with quant_method: transformers recognises it
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved", device_map="cpu")
    torch.testing.assert_close(_logits(auto), _logits(ref), rtol=0, atol=0)


def test_quantizer_is_trainable():
    q = ModelOptHfQuantizer(ModelOptConfig(), pre_quantized=True)
    assert q.is_trainable is True
    assert q.is_serializable()


def test_automodel_lora_with_prepare_model_for_kbit_training():
    """The front door a QLoRA user takes: AutoModel -> prepare_model_for_kbit_training -> LoRA."""
    peft = pytest.importorskip("peft")
    import motensor.lora as mlora

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(DATA / "llama-nvfp4", device_map="cpu", dtype=torch.float32)
    assert model.hf_quantizer.is_trainable
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    assert all(not p.requires_grad for p in model.parameters())
    pm = mlora.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# -- hub ids ---------------------------------------------------------------------------------------
def _fake_hub_cache(cache: Path, repo_id: str, src: Path, revision: str = "0" * 40) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (snap / f.name).symlink_to(f.resolve())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = _fake_hub_cache(cache, "nvidia/Tiny-Llama-NVFP4", DATA / "llama-nvfp4")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    return cache, snap


def test_hub_id_everywhere_offline(offline_hub):
    cache, snap = offline_hub
    repo = "nvidia/Tiny-Llama-NVFP4"
    ck = motensor.open(repo, cache_dir=cache)
    assert ck.root.resolve() == snap.resolve()
    loaded = motensor.load(repo, device="cpu", cache_dir=cache, progress=False)
    assert loaded.modules
    ours = motensor.from_pretrained(repo, device="cpu", cache_dir=cache, progress=False)
    ref = motensor.from_pretrained(DATA / "llama-nvfp4", device="cpu", progress=False)
    torch.testing.assert_close(_logits(ours), _logits(ref), rtol=0, atol=0)
    auto = AutoModelForCausalLM.from_pretrained(repo, cache_dir=cache, device_map="cpu")
    torch.testing.assert_close(_logits(auto), _logits(ref), rtol=0, atol=0)
    tok = motensor.load_tokenizer(repo, cache_dir=cache)
    assert tok("And God said")["input_ids"]


def test_hub_id_revision_and_missing_repo(offline_hub):
    cache, _ = offline_hub
    motensor.open("nvidia/Tiny-Llama-NVFP4", revision="0" * 40, cache_dir=cache)
    with pytest.raises(ShardError, match="Hugging Face cache"):
        motensor.open("nvidia/Not-There", cache_dir=cache)
    with pytest.raises(ShardError, match="no such file"):
        motensor.open("./no/such/dir/")


# -- save_pretrained -----------------------------------------------------------------------------------
def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = motensor.open(path)
    return {n: ck.tensor(n) for n in ck.tensor_names()}


@pytest.mark.parametrize("path", QUANTIZED, ids=lambda p: p.name)
def test_save_round_trip(path: Path, tmp_path):
    model = motensor.from_pretrained(path, device="cpu", progress=False)
    out = tmp_path / "saved"
    model.save_pretrained(out)
    assert (out / "hf_quant_config.json").is_file()
    saved_cfg = json.loads((out / "config.json").read_text())
    assert saved_cfg["quantization_config"]["quant_method"] == "modelopt"
    src, dst = _tensors(path), _tensors(out)
    assert set(dst) == set(src)
    for name, t in src.items():
        assert dst[name].dtype == t.dtype and dst[name].shape == t.shape, name
        assert torch.equal(dst[name].view(-1).view(torch.uint8), t.view(-1).view(torch.uint8)), name
    assert json.loads((out / "hf_quant_config.json").read_text()) == json.loads((path / "hf_quant_config.json").read_text())
    again = motensor.from_pretrained(out, device="cpu", progress=False)
    torch.testing.assert_close(_logits(again), _logits(model), rtol=0, atol=0)


def test_save_sharded_with_index_from_automodel(tmp_path):
    path = DATA / "llama-nvfp4"
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu")
    out = tmp_path / "sharded"
    model.save_pretrained(out, max_shard_size="200KB")
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    src, dst = _tensors(path), _tensors(out)
    assert set(src) == set(dst) and all(torch.equal(src[n].view(-1).view(torch.uint8),
                                                    dst[n].view(-1).view(torch.uint8)) for n in src)
    back = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
    torch.testing.assert_close(_logits(back), _logits(model), rtol=0, atol=0)


def test_save_without_source_hf_quant_config(tmp_path):
    """A checkpoint with only config.json's quantization_config still saves an hf_quant_config.json."""
    src = tmp_path / "src"
    shutil.copytree(DATA / "llama-fp8", src)
    (src / "hf_quant_config.json").unlink()
    model = motensor.from_pretrained(src, device="cpu", progress=False)
    model.save_pretrained(tmp_path / "out")
    q = json.loads((tmp_path / "out" / "hf_quant_config.json").read_text())
    assert q["quantization"]["quant_algo"] == "FP8"
    assert motensor.open(tmp_path / "out").quant_config.quant_algo == "FP8"


# -- arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, expected", [
    ({}, torch.bfloat16),  # "auto": the checkpoint's
    ({"dtype": "auto"}, torch.bfloat16),
    ({"dtype": "float16"}, torch.float16),
    ({"dtype": torch.float16}, torch.float16),
    ({"torch_dtype": torch.float16}, torch.float16),
    ({"torch_dtype": "float32"}, torch.float32),
    ({"dtype": "torch.bfloat16"}, torch.bfloat16),
])
def test_dtype_arguments(kwargs, expected):
    model = motensor.from_pretrained(DATA / "llama-nvfp4", device="cpu", progress=False, **kwargs)
    assert model.model.embed_tokens.weight.dtype == expected


@pytest.mark.parametrize("bad", ["fp17", torch.int8, 3])
def test_unknown_dtype_lists_choices(bad):
    with pytest.raises(ArgumentError, match="bfloat16.*float16.*float32"):
        motensor.from_pretrained(DATA / "llama-nvfp4", device="cpu", dtype=bad, progress=False)


def test_load_accepts_dtype_names():
    loaded = motensor.load(DATA / "llama-nvfp4", device="cpu", dtype="float16", progress=False)
    assert loaded.tensors["model.embed_tokens.weight"].dtype == torch.float16
    with pytest.raises(ArgumentError, match="choose one of"):
        motensor.load(DATA / "llama-nvfp4", device="cpu", dtype="fp17", progress=False)


def test_default_device_and_device_map(caplog):
    from motensor.args import default_device, resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    model = motensor.from_pretrained(DATA / "llama-nvfp4", progress=False)
    assert model.device.type == expected
    assert resolve_device(None, "cpu") == torch.device("cpu")
    assert resolve_device(None, {"": "cpu"}) == torch.device("cpu")
    assert resolve_device(None, {"model": "cpu", "lm_head": "cpu"}) == torch.device("cpu")
    assert resolve_device(None, "auto").type == expected
    with pytest.raises(ArgumentError, match="2 devices"):
        resolve_device(None, {"model": "cpu", "lm_head": "cuda:0"})
    with pytest.raises(ArgumentError, match="disagree"):
        resolve_device("cpu", "cuda:0")
    with pytest.raises(ArgumentError, match="unknown device"):
        resolve_device("gpu7")
    model = motensor.from_pretrained(DATA / "llama-nvfp4", device_map={"": "cpu"}, progress=False)
    assert model.device.type == "cpu"


def test_tokenizer_missing_is_a_clear_error():
    with pytest.raises(ConfigError, match="no tokenizer files"):
        motensor.load_tokenizer(DATA / "mistral-nvfp4")


# -- packaging ----------------------------------------------------------------------------------------
def test_cli_names_the_extra_when_transformers_is_missing(monkeypatch, capsys):
    import sys

    from motensor import cli

    for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without it looks like
    assert cli.main(["generate", str(DATA / "llama-nvfp4"), "-p", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "motensor[models]" in err and "transformers" in err


def test_cli_generate_without_tokenizer_is_an_error(capsys):
    from motensor import cli

    assert cli.main(["generate", str(DATA / "mistral-nvfp4"), "-p", "x", "--device", "cpu", "-q"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_cli_hub_id(offline_hub, capsys):
    from motensor import cli

    cache, _ = offline_hub
    assert cli.main(["inspect", "nvidia/Tiny-Llama-NVFP4", "--cache-dir", str(cache), "--local-files-only"]) == 0
    assert "NVFP4" in capsys.readouterr().out


def test_push_to_hub_uploads_a_modelopt_checkpoint(monkeypatch):
    """push_to_hub saves through the model's save_pretrained: the upload holds hf_quant_config.json
    and the original tensors (the Hub itself is replaced by a recorder: no network in tests)."""
    import types

    import transformers.utils.hub as hf_hub_utils

    model = motensor.from_pretrained(DATA / "llama-nvfp4", device="cpu", progress=False)
    uploaded: dict[str, dict] = {}

    def fake_upload(self, folder, repo_id, **kwargs):
        ck = motensor.open(folder)
        uploaded[repo_id] = {"files": sorted(p.name for p in Path(folder).iterdir()),
                             "tensors": {n: ck.tensor(n) for n in ck.tensor_names()}}

    monkeypatch.setattr(hf_hub_utils, "hf_api", lambda: types.SimpleNamespace(
        create_repo=lambda repo_id, **kw: types.SimpleNamespace(repo_id=repo_id)))
    monkeypatch.setattr(hf_hub_utils, "create_and_tag_model_card",
                        lambda *a, **k: types.SimpleNamespace(save=lambda path: None))
    monkeypatch.setattr(type(model), "_upload_modified_files", fake_upload)
    model.push_to_hub("me/tiny-nvfp4")
    got = uploaded["me/tiny-nvfp4"]
    assert "hf_quant_config.json" in got["files"] and "config.json" in got["files"]
    src = _tensors(DATA / "llama-nvfp4")
    assert set(got["tensors"]) == set(src)
    assert all(torch.equal(got["tensors"][n].view(-1).view(torch.uint8), src[n].view(-1).view(torch.uint8)) for n in src)
