"""``motensor.from_pretrained`` on checkpoints written here, for every supported architecture.

The real ModelOpt exports in tests/data (tests/test_models.py) cover the numerics against
ModelOpt's fake-quant model. These checkpoints cover what those cannot: every architecture in
``SUPPORTED_ARCHITECTURES`` whatever ModelOpt managed to export, configurations the fixtures do not
use (Llama 3.1 ``llama3`` RoPE scaling, tied embeddings stored once, Mixtral's legacy
``block_sparse_moe`` names, unquantized experts stacked into transformers' fused containers), and
the errors.

Each one is a tiny random transformers model whose Linears are quantized with
``motensor.quantize.quantize_weight`` into the exact ModelOpt layout (FORMATS.md section 4; MoE
experts split per expert as ModelOpt's export writes them, section 5) and written with
safetensors + ``hf_quant_config.json`` + ``config.json``. The reference is the same transformers
model with each quantized weight replaced by the checkpoint's dequantized weight (the Rust
dequantizer, ``Checkpoint.dequantize``) rounded to bf16, run by transformers itself. The format
is weight-only (W4A16_AWQ, group 128), so that reference needs no activation emulation: the
remaining differences are bf16 rounding of the weights in the reference (motensor multiplies
with the exact fp32 weight) and accumulation order. With motensor's weight operand rounded to bf16
too (``bf16_weight_operand``) every weight operand is identical and the logits agree to within
``BF16_OPERAND_RTOL`` (bit for bit on some CPUs; how far depends on the BLAS kernel, not motensor).
"""
from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import motensor
from motensor.quantize import quantize_weight

torch.manual_seed(0)

QUANT_ALGO = "W4A16_AWQ"
GROUP = 128
EXCLUDE = ["lm_head", "model.embed_tokens", "*.mlp.gate", "*.shared_expert_gate", "*.feed_forward.router"]
# (ModelOpt's defaults: routers, the head)
# Logit agreement with the dequantized-bf16 reference: |diff| <= ATOL + RTOL * max|ref|. The
# reference's weights are the fp32 dequantized weights rounded to bf16 (relative error <= 2^-9 per
# weight), motensor's are exact; over two layers that moves logits by a few 1e-3 of their range.
ATOL, RTOL = 2e-2, 2e-2


def _common(**kw):
    base = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=256, max_position_embeddings=256,
                bos_token_id=0, eos_token_id=1, pad_token_id=0)
    base.update(kw)
    return base


def arch_configs():
    import transformers as T

    return {
        "llama3": (T.LlamaConfig, "LlamaForCausalLM", _common(
            head_dim=32, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
        "qwen2": (T.Qwen2Config, "Qwen2ForCausalLM", _common(tie_word_embeddings=True)),
        "qwen3": (T.Qwen3Config, "Qwen3ForCausalLM", _common(head_dim=32, tie_word_embeddings=True)),
        "mistral": (T.MistralConfig, "MistralForCausalLM", _common(head_dim=32, tie_word_embeddings=False)),
        "phi3": (T.Phi3Config, "Phi3ForCausalLM", _common(tie_word_embeddings=False)),
        "gemma3": (T.Gemma3TextConfig, "Gemma3ForCausalLM", _common(
            head_dim=32, sliding_window=8, tie_word_embeddings=True,
            layer_types=["sliding_attention", "full_attention"])),
        "qwen3_moe": (T.Qwen3MoeConfig, "Qwen3MoeForCausalLM", _common(
            head_dim=32, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128, decoder_sparse_step=1,
            mlp_only_layers=[], norm_topk_prob=True, tie_word_embeddings=False)),
        "mixtral": (T.MixtralConfig, "MixtralForCausalLM", _common(
            head_dim=32, intermediate_size=128, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)),
        # MLA (q_a/q_b, kv_a_proj_with_mqa/kv_b), layer 0 dense, layer 1 routed + shared experts
        "deepseek_v3": (T.DeepseekV3Config, "DeepseekV3ForCausalLM", _common(
            num_key_value_heads=4, moe_intermediate_size=128, n_routed_experts=4, n_shared_experts=1,
            num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1, q_lora_rank=128,
            kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32, routed_scaling_factor=2.5,
            tie_word_embeddings=False)),
        "qwen2_moe": (T.Qwen2MoeConfig, "Qwen2MoeForCausalLM", _common(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=128, shared_expert_intermediate_size=256,
            decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=False)),
        "glm4_moe": (T.Glm4MoeConfig, "Glm4MoeForCausalLM", _common(
            head_dim=32, moe_intermediate_size=128, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
            first_k_dense_replace=1, use_qk_norm=True, tie_word_embeddings=False)),
        # in-place quantized 3-D experts (experts.gate_up_proj [E, H, 2I]); every layer MoE
        "llama4": (T.Llama4TextConfig, "Llama4ForCausalLM", _common(
            head_dim=32, intermediate_size=128, intermediate_size_mlp=256, num_local_experts=4,
            num_experts_per_tok=1, interleave_moe_layer_step=1, attention_chunk_size=64, tie_word_embeddings=False)),
    }


# INT4 AWQ packs pairs along N, which ModelOpt does not write for in-place (BMM) expert
# parameters; the Llama 4 checkpoint uses the weight-only FP4 format instead.
QUANT_ALGO_OF = {"llama4": "W4A16_NVFP4"}
GROUP_OF = {"W4A16_NVFP4": 16}


def _is_bmm_experts(mod) -> bool:
    """Experts multiplied with bmm as ``x @ gate_up_proj[e]`` (``[E, H, 2I]``), e.g. Llama 4."""
    from motensor.models.bmm_experts import _takes_routing
    from motensor.models.moe import is_fused_experts

    return is_fused_experts(mod) and not _takes_routing(mod)


def build_model(arch: str):
    import transformers

    cfg_cls, cls_name, kw = arch_configs()[arch]
    cfg = cfg_cls(**kw)
    cfg.architectures = [cls_name]
    torch.manual_seed(1)
    # _from_config with dtype, as from_pretrained builds it: parameters in bf16, RoPE frequencies
    # fp32 (``.to(torch.bfloat16)`` would round those too).
    model = getattr(transformers, cls_name)._from_config(cfg, dtype=torch.bfloat16).eval()
    with torch.no_grad():  # random init is too flat to tell a wrong mapping from a right one
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
            elif "norm" in n:
                p.uniform_(0.6, 1.2) if arch != "gemma3" else p.uniform_(-0.3, 0.3)
    model.config.dtype = torch.bfloat16
    return model


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in EXCLUDE)


def _quantize_into(out: dict, name: str, w: torch.Tensor, algo: str = QUANT_ALGO) -> None:
    for role, t in quantize_weight(algo, w.float(), group_size=GROUP_OF.get(algo, GROUP)).items():
        out[f"{name}.{role}"] = t.contiguous()


def _quantize_bmm_into(out: dict, name: str, param: str, w: torch.Tensor, algo: str) -> None:
    """A 3-D ``[E, K, N]`` parameter quantized in place, as ModelOpt 0.47 writes it: quantized as
    one tensor over ``[E*N, K]`` (one per-tensor scale), packed along K, then stored input-major
    (``<param>`` ``[E, K/2, N]``, ``<param>_weight_scale`` ``[E, K/G, N]``)."""
    E, K, N = w.shape
    q = quantize_weight(algo, w.transpose(1, 2).reshape(E * N, K).float(), group_size=GROUP_OF.get(algo, GROUP))
    for role, t in q.items():
        if t.dim() == 2:
            t = t.reshape(E, N, t.shape[-1]).transpose(1, 2)
        key = f"{name}.{param}" if role == "weight" else f"{name}.{param}_{role}"
        out[key] = t.contiguous()


def export_checkpoint(model, out_dir: Path, *, quantize_experts: bool | int = True, legacy_mixtral: bool = True,
                      kv_cache: str | None = None) -> Path:
    """Writes ``model`` the way ModelOpt's export would: quantized Linears in ModelOpt layout,
    fused experts split per expert, the rest in bf16, tied weights stored once.
    ``quantize_experts``: True, False, or the number of experts (per layer) to quantize, the others
    written in bf16 and listed in ``exclude_modules``. ``kv_cache``: a ``kv_cache_quant_algo``;
    KV scales (``amax / 448`` with amax 2.0) are written under ``self_attn.{k,v}_proj`` as ModelOpt does."""
    from safetensors.torch import save_file

    from motensor.models.moe import is_fused_experts

    arch = model.config.architectures[0]
    algo = QUANT_ALGO_OF.get(model.config.model_type.removesuffix("_text"), QUANT_ALGO)
    tensors: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not _excluded(name):
            _quantize_into(tensors, name, mod.weight.detach(), algo)
            if mod.bias is not None:
                tensors[f"{name}.bias"] = mod.bias.detach().clone()
            done.update({f"{name}.weight", f"{name}.bias"})
        elif _is_bmm_experts(mod):
            for param in ("gate_up_proj", "down_proj"):
                _quantize_bmm_into(tensors, name, param, getattr(mod, param).detach(), algo)
            done.update({f"{name}.gate_up_proj", f"{name}.down_proj"})
        elif is_fused_experts(mod):
            inter = mod.gate_up_proj.shape[1] // 2
            for e in range(mod.gate_up_proj.shape[0]):
                parts = {"gate_proj": mod.gate_up_proj[e, :inter], "up_proj": mod.gate_up_proj[e, inter:],
                         "down_proj": mod.down_proj[e]}
                for leaf, w in parts.items():
                    pname = f"{name}.{e}.{leaf}"
                    if quantize_experts is True or (quantize_experts is not False and e < quantize_experts):
                        _quantize_into(tensors, pname, w.detach(), algo)
                    else:
                        tensors[f"{pname}.weight"] = w.detach().clone().contiguous()
            done.update({f"{name}.gate_up_proj", f"{name}.down_proj"})
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {"lm_head.weight"}
    for name, p in model.state_dict().items():
        if name not in done and name not in tied:
            tensors[name] = p.detach().clone().contiguous()
    if kv_cache:
        for i in range(model.config.num_hidden_layers):
            tensors[f"model.layers.{i}.self_attn.k_proj.k_scale"] = torch.tensor(2.0 / 448)
            tensors[f"model.layers.{i}.self_attn.v_proj.v_scale"] = torch.tensor(1.5 / 448)
    if arch == "MixtralForCausalLM" and legacy_mixtral:  # what ModelOpt's export writes (FIXTURES.md)
        legacy = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}

        def old(n: str) -> str:
            n = n.replace(".mlp.", ".block_sparse_moe.")
            return re.sub(r"(experts\.\d+\.)(gate_proj|up_proj|down_proj)", lambda m: m.group(1) + legacy[m.group(2)], n)

        tensors = {old(n): t for n, t in tensors.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    exclude = list(EXCLUDE)
    if quantize_experts is not True:
        exclude += sorted({n.rsplit(".", 2)[0] for n in tensors if ".experts." in n and n.endswith(".weight")
                           and n.replace(".weight", ".weight_scale") not in tensors})
    quant = {"quant_algo": algo, "kv_cache_quant_algo": kv_cache, "group_size": GROUP_OF.get(algo, GROUP),
             "has_zero_point": False, "pre_quant_scale": True, "exclude_modules": exclude}
    (out_dir / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant}, indent=2))
    cfg = model.config.to_dict()
    cfg["architectures"] = [arch]
    cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": algo, "ignore": exclude,
                                  "producer": {"name": "modelopt", "version": "0.47.0"}}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    return out_dir


def dequantized_reference(model, ckpt_dir: Path, dtype: torch.dtype = torch.bfloat16):
    """``model`` in ``dtype`` with every quantized weight replaced by the checkpoint's dequantized one."""
    import copy

    from motensor.models.moe import is_fused_experts

    ref = copy.deepcopy(model)
    if dtype != model.dtype:  # (a cast to bf16 would also round the fp32 RoPE frequencies)
        ref = ref.to(dtype)
    ckpt = motensor.open(ckpt_dir)
    mods = ckpt.modules
    legacy = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}

    def stored(name: str):
        """The checkpoint's module name for a model module name, or None if not quantized."""
        if name in mods:
            return name
        m = re.match(r"(.*)\.mlp\.experts\.(\d+)\.(\w+)$", name)  # Mixtral legacy names
        legacy_name = m and f"{m.group(1)}.block_sparse_moe.experts.{m.group(2)}.{legacy[m.group(3)]}"
        return legacy_name if legacy_name in mods else None

    def deq(name: str, current: torch.Tensor) -> torch.Tensor:
        s = stored(name)
        return current if s is None else ckpt.dequantize(s).to(dtype)

    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, torch.nn.Linear) and not _excluded(name):
                mod.weight.copy_(deq(name, mod.weight))
            elif _is_bmm_experts(mod):
                for param in ("gate_up_proj", "down_proj"):  # dequantize() gives [E, N, K]
                    getattr(mod, param).copy_(ckpt.dequantize(f"{name}.{param}").transpose(1, 2).to(dtype))
            elif is_fused_experts(mod):
                inter = mod.gate_up_proj.shape[1] // 2
                for e in range(mod.gate_up_proj.shape[0]):
                    gu = mod.gate_up_proj[e]
                    mod.gate_up_proj[e].copy_(torch.cat([deq(f"{name}.{e}.gate_proj", gu[:inter]),
                                                         deq(f"{name}.{e}.up_proj", gu[inter:])]))
                    mod.down_proj[e].copy_(deq(f"{name}.{e}.down_proj", mod.down_proj[e]))
    return ref


ARCHS = ["llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma3", "qwen3_moe", "mixtral", "deepseek_v3", "qwen2_moe",
         "glm4_moe", "llama4"]
MOE_ARCHS = {"qwen3_moe", "mixtral", "deepseek_v3", "qwen2_moe", "glm4_moe", "llama4"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """arch -> (transformers model, checkpoint dir), built once per test session."""
    cache: dict[str, tuple] = {}

    def get(arch: str, **kw):
        key = arch + json.dumps(kw, sort_keys=True)
        if key not in cache:
            model = build_model(arch)
            d = export_checkpoint(model, tmp_path_factory.mktemp(arch), **kw)
            cache[key] = (model, d)
        return cache[key]

    return get


IDS = torch.tensor([[5, 17, 200, 33, 90, 128, 7, 64, 250, 3, 99, 12]])


@pytest.fixture
def bf16_weight_operand(monkeypatch):
    """The CPU reference kernels multiply with the bf16-rounded dequantized weight, as the
    transformers reference here (and ModelOpt) does: only accumulation order is left to differ.
    The forwards run the torch reference itself (not the fused Rust kernels, which are held to
    the reference with bounds in tests/test_cpu_kernels.py)."""
    from motensor.kernels import reference as ref

    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")

    orig = ref.dequant_w4
    monkeypatch.setattr(ref, "dequant_w4", lambda *a, **k: orig(*a, **k).to(torch.bfloat16).float())


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits.float()


def _assert_close(got: torch.Tensor, ref: torch.Tensor, what: str):
    err = (got - ref).abs().max().item()
    bound = ATOL + RTOL * ref.abs().max().item()
    assert err <= bound, f"{what}: max |logit diff| {err:.4g} > {bound:.4g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_from_pretrained_matches_dequantized_reference(arch, exported):
    from motensor.models.moe import QuantExperts
    from motensor.nn import QuantLinear

    model, d = exported(arch)
    m = motensor.from_pretrained(d, device="cpu")
    assert type(m).__name__ == model.config.architectures[0]
    assert not m.training
    ckpt = motensor.open(d)
    report = m.motensor_report
    # every quantized checkpoint module found its place, excluded ones stayed plain bf16 Linears
    n_expert_modules = sum(1 for n in ckpt.modules if ".experts." in n)
    assert len(report.quantized_linears) + n_expert_modules == len(ckpt.modules)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            assert _excluded(name), f"{name} should be quantized"
        if isinstance(mod, QuantLinear) and ".experts" not in name:
            assert not _excluded(name)
    if arch in MOE_ARCHS:
        from motensor.models.moe import is_fused_experts

        experts = [mod for mod in m.modules() if isinstance(mod, QuantExperts)]
        assert experts and len(experts) == sum(1 for mod in model.modules() if is_fused_experts(mod))
    # tied embeddings stored once come back tied
    if model.config.tie_word_embeddings:
        assert m.lm_head.weight is m.model.embed_tokens.weight
        assert report.tied
    # non-persistent buffers were re-created with the model's own values
    want = dict(model.named_buffers())
    recreated = [n for n, _ in m.named_buffers() if n.endswith(("inv_freq", "embed_scale"))]
    assert recreated
    for n, b in m.named_buffers():
        if n in recreated:
            assert b.device.type == "cpu" and torch.equal(b.float(), want[n].float()), n
    ref = _logits(dequantized_reference(model, d))
    _assert_close(_logits(m), ref, arch)


# With the same bf16 weight operand on both sides, what motensor controls is identical: every
# QuantLinear's weight operand equals the reference Linear's weight bit for bit (asserted below).
# The logits are then the same ops on the same operands, but whether they come out bit-exact
# depends on the CPU's BLAS kernel, which motensor does not control: bias fused into addmm or not,
# AVX-512 vs AVX2 vs NEON reduction order (AMD EPYC / AVX2: 0.0234 on qwen2, 2^-7 of the range;
# bit-exact on the AVX-512 machine that wrote these tests). So they are bounded: two bf16 steps of
# the logit range, the tolerance the MoE architectures (expert sums in another order) always had.
BF16_OPERAND_RTOL = 2.0**-6


@pytest.mark.parametrize("arch", ARCHS)
def test_same_weights_and_bounded_logits_with_bf16_weight_operand(arch, exported, bf16_weight_operand):
    from motensor.nn import QuantLinear

    model, d = exported(arch)
    m = motensor.from_pretrained(d, device="cpu")
    ref = dequantized_reference(model, d)
    ref_mods = dict(ref.named_modules())
    compared = 0
    for name, mod in m.named_modules():
        if isinstance(mod, QuantLinear) and ".experts" not in name:
            want_w = ref_mods[name].weight
            got_w = mod.dequantize(torch.float32).to(torch.bfloat16)
            assert torch.equal(got_w, want_w.to(torch.bfloat16)), f"{arch}: {name}: weight operand differs"
            compared += 1
    assert compared > 0
    got, want = _logits(m), _logits(ref)
    err = (got - want).abs().max().item()
    assert err <= want.abs().max().item() * BF16_OPERAND_RTOL, f"{arch}: max |logit diff| {err:.4g}"


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_moe_loop_and_dense_agree(arch, exported):
    _, d = exported(arch)
    m = motensor.from_pretrained(d, device="cpu", moe_mode="loop")
    loop = _logits(m)
    for mod in m.modules():
        if hasattr(mod, "mode") and type(mod).__name__ == "QuantExperts":
            mod.mode = "dense"
    _assert_close(_logits(m), loop, f"{arch} dense vs loop")


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3", "llama4"])
def test_moe_grouped_agrees_with_loop(arch, exported):
    """The grouped experts path (all routed pairs in one ``motensor::moe_w4a16_gemm`` per projection;
    on a CPU the op is the loop reference, the Triton kernel is tests/kernels/test_moe_grouped.py) gives
    the loop's logits; its stacked ``[E, ...]`` weights are views of the loaded tensors, not copies."""
    from motensor.models.moe import QuantExperts

    _, d = exported(arch)
    m = motensor.from_pretrained(d, device="cpu", moe_mode="loop")
    loop = _logits(m)
    experts = [mod for mod in m.modules() if isinstance(mod, QuantExperts)]
    assert experts
    for mod in experts:
        assert mod._grouped_why_not is None, mod._grouped_why_not
        mod.mode = "grouped"
        st = mod.grouped_tensors()
        for proj in ("gate", "up", "down"):
            w, first = st[proj]["qweight"], getattr(mod, proj)[0].weight
            assert w.shape == (mod.num_experts, *first.shape)
            assert w.untyped_storage().data_ptr() == first.untyped_storage().data_ptr(), f"{proj} weights copied"
            for e in (0, mod.num_experts - 1):
                assert torch.equal(w[e], getattr(mod, proj)[e].weight)
    _assert_close(_logits(m), loop, f"{arch} grouped vs loop")


def test_moe_grouped_refuses_what_it_cannot_run(exported, tmp_path):
    """Forcing the grouped path on experts it does not cover names the module and the reason."""
    from motensor.errors import ArgumentError
    from motensor.models.moe import QuantExperts
    from motensor.nn import QuantLinear

    lin = lambda n, k: torch.nn.Linear(k, n, bias=False)
    mk = lambda n, k: QuantLinear.from_float(lin(n, k), "FP8", input_amax=4.0)
    q = QuantExperts([mk(32, 64) for _ in range(2)], [mk(32, 64) for _ in range(2)], [mk(64, 32) for _ in range(2)],
                     torch.nn.functional.silu, name="layers.0.mlp.experts", mode="grouped")
    assert "FP8" in q._grouped_why_not
    with pytest.raises(ArgumentError, match="layers.0.mlp.experts.*grouped"):
        q(torch.randn(3, 64), torch.tensor([[0, 1]] * 3), torch.rand(3, 2))


def test_unquantized_experts_are_stacked_into_the_fused_container(exported):
    """A checkpoint that leaves the experts in bf16 fills transformers' own 3-D parameters."""
    model, d = exported("qwen3_moe", quantize_experts=False)
    m = motensor.from_pretrained(d, device="cpu")
    experts = m.model.layers[0].mlp.experts
    assert type(experts).__name__ == "Qwen3MoeExperts"
    assert torch.equal(experts.gate_up_proj, model.model.layers[0].mlp.experts.gate_up_proj)
    _assert_close(_logits(m), _logits(dequantized_reference(model, d)), "qwen3_moe bf16 experts")


def test_partly_quantized_experts(exported):
    """Experts the checkpoint leaves in bf16 (excluded) run as plain Linears beside quantized ones."""
    from motensor.models.moe import QuantExperts

    model, d = exported("mixtral", quantize_experts=2)
    m = motensor.from_pretrained(d, device="cpu")
    experts = m.model.layers[0].mlp.experts
    assert isinstance(experts, QuantExperts)
    assert type(experts.gate[0]).__name__ == "QuantLinear" and type(experts.gate[3]) is torch.nn.Linear
    assert torch.equal(experts.down[3].weight, model.model.layers[0].mlp.experts.down_proj[3])
    _assert_close(_logits(m), _logits(dequantized_reference(model, d)), "mixtral, experts 2-3 in bf16")


@pytest.mark.parametrize("arch", ["llama3", "mixtral"])
def test_generate_matches_dequantized_reference(arch, exported):
    """``generate()`` with the KV cache (for MoE: the expert loop at one token per step) gives the
    reference's tokens. In float32 (``from_pretrained(dtype=torch.float32)``): in bf16 these random
    models have exact logit ties from the second token on, in fp32 both sides use the exact
    dequantized weight and differ only in summation order."""
    model, d = exported(arch)
    m = motensor.from_pretrained(d, device="cpu", dtype=torch.float32)
    ref = dequantized_reference(model, d, torch.float32)
    assert (_logits(m) - _logits(ref)).abs().max().item() < 1e-4
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(m.generate(IDS, **kw), ref.generate(IDS, **kw))


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_fp8_kv_cache_scales_quantize_k_and_v(exported, monkeypatch):
    """ModelOpt's FP8 KV-cache scales act where its fake-quant model applies them: on K and V as
    they enter the attention function (after RoPE, with the cache), so every K/V the attention sees
    is on the E4M3 grid of its scale, in the prompt forward and in each cached decode step."""
    from transformers.modeling_utils import AttentionInterface

    from motensor.models.kv_cache import fp8_fake_quant

    _, d = exported("llama3", kv_cache="FP8")
    m = motensor.from_pretrained(d, device="cpu")
    assert m.config._attn_implementation == "motensor_fp8kv_sdpa"
    assert m.motensor_report.kv_cache_scales == m.config.num_hidden_layers
    seen = []
    base = AttentionInterface._global_mapping["sdpa"]

    def spy(module, q, k, v, *args, **kwargs):
        seen.append((module.k_scale, module.v_scale, k, v))
        return base(module, q, k, v, *args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", spy)
    m.generate(IDS, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert len(seen) == 3 * m.config.num_hidden_layers
    for ks, vs, k, v in seen:
        assert ks.item() == pytest.approx(2.0 / 448) and vs.item() == pytest.approx(1.5 / 448)
        assert torch.equal(fp8_fake_quant(k, ks), k) and torch.equal(fp8_fake_quant(v, vs), v)
        assert k.abs().max() <= 2.0 and not torch.equal(fp8_fake_quant(k, ks * 3), k)
    # without scales in the checkpoint, nothing changes: same model as the plain one
    plain = motensor.from_pretrained(exported("llama3")[1], device="cpu")
    assert plain.config._attn_implementation == "sdpa"


def test_untested_architecture_is_tried_and_errors_name_the_module(exported, tmp_path, caplog):
    """An architecture outside the tested list is built anyway (with a logged warning); what does
    not fit raises naming the module. Only classes transformers lacks are refused up front."""
    from motensor.models import UnsupportedArchitectureError

    _, d = exported("llama3")
    bad = _edit_config(d, tmp_path / "gpt2", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with caplog.at_level("WARNING", logger="motensor.models"):
        with pytest.raises(motensor.FormatError, match=r"model\.layers\.0\.") as e:
            motensor.from_pretrained(bad, device="cpu")
    assert "GPT2LMHeadModel" in str(e.value)
    assert any("GPT2LMHeadModel" in r.getMessage() and "trying" in r.getMessage() for r in caplog.records)
    unknown = _edit_config(d, tmp_path / "unknown", architectures=["NoSuchModelForCausalLM"])
    with pytest.raises(UnsupportedArchitectureError, match="NoSuchModelForCausalLM") as e:
        motensor.from_pretrained(unknown, device="cpu")
    assert "LlamaForCausalLM" in str(e.value)  # the message lists what is tested
    assert isinstance(e.value, motensor.ConfigError)
    none = _edit_config(d, tmp_path / "none", architectures=[])
    with pytest.raises(UnsupportedArchitectureError, match="names no architecture"):
        motensor.from_pretrained(none, device="cpu")


def test_missing_tensor_is_named(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    _, d = exported("qwen3")
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    t = load_file(str(broken / "model.safetensors"))
    del t["model.layers.1.post_attention_layernorm.weight"]
    save_file(t, str(broken / "model.safetensors"))
    with pytest.raises(motensor.FormatError, match="model.layers.1.post_attention_layernorm.weight"):
        motensor.from_pretrained(broken, device="cpu")


@pytest.mark.slow
def test_torch_compile_forward(exported):
    """The whole model traces into one graph (custom ops with fake kernels, no graph break) and
    computes the same logits. Backend ``aot_eager`` (functionalization + AOT autograd, no code
    generation): inductor also works on CPU but compiles for minutes on 2 cores."""
    _, d = exported("llama3")
    m = motensor.from_pretrained(d, device="cpu")
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        got = compiled(IDS).logits.float()
    assert torch.equal(got, _logits(m))
    torch._dynamo.reset()


@pytest.mark.slow
def test_static_cache_compiled_generate_moe(exported):
    """transformers' static KV cache + automatic ``torch.compile`` of the decode step (fullgraph),
    through an MoE model: QuantExperts switches to its graph-friendly dense path while traced."""
    from transformers import CompileConfig

    _, d = exported("qwen3_moe")
    # fp32 activations: with random weights, bf16 logits tie exactly at one of these steps (two
    # tokens at 1.8984), and which one argmax picks would then depend on summation order, not on
    # whether compile and the static cache compute the right thing.
    m = motensor.from_pretrained(d, device="cpu", dtype=torch.float32)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    eager = m.generate(IDS, **kw)
    cc = CompileConfig(backend="aot_eager", fullgraph=True, mode=None)
    cc._compile_all_devices = True  # transformers auto-compiles on accelerators only, unless told
    compiled = m.generate(IDS, cache_implementation="static", compile_config=cc, **kw)
    assert getattr(m, "_compiled_call", None) is not None, "generate did not compile the forward"
    assert torch.equal(compiled, eager)
    torch._dynamo.reset()
