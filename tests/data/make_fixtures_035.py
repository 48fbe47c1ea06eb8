#!/usr/bin/env python
"""Real ModelOpt exports of the architectures nvidia-modelopt 0.47 cannot export on a CPU.

nvidia-modelopt 0.35.1 (with transformers 4.55) exports tiny DeepSeek-V3 (MLA attention, routed +
shared experts, a dense first layer) and Llama 4 (3-D "BMM" experts quantized in place:
``feed_forward.experts.gate_up_proj`` ``[E, H, 2I]`` with ``gate_up_proj_weight_scale`` ...) on a
CPU (FIXTURES.md). This script writes them into tests/data/ with references in the same schema as
``make_fixtures.py`` (``references/<fixture>.{json,safetensors}``: ``model.input_ids``,
``model.logits``, ``model.greedy``, ``model.top2_margin``), so tests/test_models.py checks them
like every other export.

The references are ModelOpt's own fake-quant model: a deep copy of the calibrated model on which
``make_fixtures.prepare_like_export`` ran (what the export does before packing weights: q_a/kv_a and
gate/up amax unified, MoE inputs prepared), run forward. ModelOpt's FP8 (before 0.39) and NVFP4
fake-quant ops need CUDA, so pure-torch stand-ins replace exactly those ops
(``standin_dynamic_block_quantize`` from make_fixtures.py for the NVFP4 blocks,
:func:`standin_scaled_e4m3` for FP8, the unfused CUDA path's math). The fixtures in tests/data were
written with nvidia-modelopt 0.47.0; the un-rebalanced copy of earlier versions of this script was
40% of the logit range off the export (DeepSeek-V3).

Environment (a private venv OUTSIDE the repo, CPU only):

    uv venv -p 3.11 /work/fixenv-035
    uv pip install -p /work/fixenv-035/bin/python torch==2.15.0
    uv pip install -p /work/fixenv-035/bin/python -c constraints.txt \\
        nvidia-modelopt==0.35.1 onnx transformers==4.55.4 accelerate safetensors numpy requests
    # releases up to 0.39 import only with the torch.onnx shim on torch 2.15:
    mkdir -p /tmp/shim && cp ../shared/tools/modelopt_old_torch_onnx_shim.py /tmp/shim/sitecustomize.py
    PYTHONPATH=/tmp/shim /work/fixenv-035/bin/python tests/data/make_fixtures_035.py [--only NAME ...]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
REFS = DATA / "references"
sys.path.insert(0, str(DATA))
from make_fixtures import N_NEW, N_PROMPT, SEED, prepare_like_export, standin_dynamic_block_quantize  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(int(os.environ.get("MOTENSOR_FIXTURE_THREADS", "2")))
STANDIN_CALLS: dict[str, int] = {}


def standin_scaled_e4m3(inputs, amax, disable_fused_kernel=True):
    """ModelOpt 0.35 ``scaled_e4m3_impl`` (CUDA-only) in torch: the unfused path,
    ``fake_e4m3fy(x * (448 / amax)) / (448 / amax)``, values below 2^-24 zeroed."""
    STANDIN_CALLS["fp8"] = STANDIN_CALLS.get("fp8", 0) + 1
    zero = inputs.abs() < 1.0 / (1 << 24)
    if amax is None:
        out = inputs.float().clamp(-448, 448).to(torch.float8_e4m3fn).to(inputs.dtype)
    else:
        scale = 448.0 / amax
        y = inputs * scale
        out = y.float().clamp(-448, 448).to(torch.float8_e4m3fn).to(y.dtype) / scale
    out = out.to(inputs.dtype)
    out[zero] = 0.0
    return out


def install_standins():
    import modelopt.torch.quantization.qtensor.nvfp4_tensor as nv
    import modelopt.torch.quantization.tensor_quant as tq

    def block(inputs, block_size, amax, num_bits, exponent_bits, sn, se):
        STANDIN_CALLS["nvfp4"] = STANDIN_CALLS.get("nvfp4", 0) + 1
        return standin_dynamic_block_quantize(inputs, block_size, amax, num_bits, exponent_bits, sn, se)

    tq.dynamic_block_quantize_op = block
    if hasattr(tq, "scaled_e4m3_impl"):  # CUDA-only before 0.39; 0.47 has a CPU path
        import modelopt

        if modelopt.__version__.startswith("0.3"):
            tq.scaled_e4m3_impl = standin_scaled_e4m3
    if hasattr(nv, "fp4_compatible"):
        nv.fp4_compatible = lambda: False  # export asks the GPU otherwise (FIXTURES.md)


COMMON = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
              max_position_embeddings=256, bos_token_id=0, eos_token_id=1, pad_token_id=0)


def specs():
    import transformers as T

    return {
        # 2 layers, every one MoE: 4 routed experts (top-1, sigmoid router) + a shared expert.
        "llama4": (T.Llama4TextConfig, T.Llama4ForCausalLM, dict(
            COMMON, head_dim=32, intermediate_size=64, intermediate_size_mlp=128, num_hidden_layers=2,
            num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=1, tie_word_embeddings=False,
            attention_chunk_size=64, no_rope_layers=[1, 0], use_qk_norm=True)),
        # MLA (q_lora_rank, kv_lora_rank), layer 0 dense, layer 1 with 4 routed + 1 shared expert.
        "deepseekv3": (T.DeepseekV3Config, T.DeepseekV3ForCausalLM, dict(
            COMMON, num_key_value_heads=4, intermediate_size=128, moe_intermediate_size=64, num_hidden_layers=2,
            n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
            first_k_dense_replace=1, q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=16,
            v_head_dim=32, routed_scaling_factor=2.5, norm_topk_prob=True, tie_word_embeddings=False,
            rope_scaling=None)),
    }


FORMATS = {"nvfp4": ("NVFP4_DEFAULT_CFG", "NVFP4"), "fp8": ("FP8_DEFAULT_CFG", "FP8")}
STEPS = ["llama4-nvfp4", "llama4-fp8", "deepseekv3-nvfp4"]
GU0 = "model.layers.0.feed_forward.experts.gate_up_proj"


def build(arch: str):
    C, M, kw = specs()[arch]
    cfg = C(**kw)
    cfg.architectures = [M.__name__]
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as td:
        M(cfg).save_pretrained(td)
        import transformers

        key = "torch_dtype" if transformers.__version__.startswith("4.") else "dtype"
        model = M.from_pretrained(td, **{key: torch.bfloat16}).eval()
    with torch.no_grad():  # default init is too flat (std 0.02) for a logit comparison to mean much
        g = torch.Generator().manual_seed(SEED + 3)
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    return model


def references(model, ids):
    with torch.no_grad():
        logits = model(ids).logits.float()
        gen = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, return_dict_in_generate=True,
                             output_logits=True, pad_token_id=0, eos_token_id=None)
    margins = []
    for lg in gen.logits:
        top = lg[0].float().topk(2).values
        margins.append((top[0] - top[1]).item())
    return logits, gen.sequences, torch.tensor(margins, dtype=torch.float32)


def step(name: str):
    import modelopt
    import modelopt.torch.quantization as mtq
    import transformers
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import save_file

    arch, slug = name.split("-")[:2]
    cfg_name, algo = FORMATS[slug]
    t0 = time.time()
    STANDIN_CALLS.clear()
    model = build(arch)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(SEED + 2)
    batches = [torch.randint(2, vocab, (1, 64), generator=g) for _ in range(8)]
    ids = torch.randint(2, vocab, (1, N_PROMPT), generator=g)

    def loop(m):
        with torch.no_grad():
            for b in batches:
                m(b)

    qcfg = copy.deepcopy(getattr(mtq, cfg_name))
    model = mtq.quantize(model, qcfg, loop)
    ref = copy.deepcopy(model)
    # What the export does before packing (gate/up and q_a/kv_a amax unified, MoE inputs...), on the
    # copy: without it the reference is not the model the checkpoint encodes (FIXTURES.md trap 3),
    # 40% of the logit range apart for these random-weight models.
    prepare_like_export(ref)
    logits, seq, margins = references(ref, ids)
    bmm = {}
    if name == "llama4-nvfp4":  # layer 0's in-place experts, as ModelOpt's forward quantizes them
        from modelopt.torch.quantization.plugins.huggingface import _transposed_quantize

        ex = ref.model.layers[0].feed_forward.experts
        with torch.no_grad():
            bmm[GU0] = _transposed_quantize(ex.gate_up_proj, ex.gate_up_proj_weight_quantizer).detach().contiguous()
    name = name + os.environ.get("MOTENSOR_FIXTURE_SUFFIX", "")
    out = DATA / name
    shutil.rmtree(out, ignore_errors=True)
    export_hf_checkpoint(model, export_dir=str(out))
    for f in out.iterdir():
        os.chmod(f, 0o644)
    hq = json.loads((out / "hf_quant_config.json").read_text())
    assert hq["quantization"]["quant_algo"].upper() == algo, hq
    REFS.mkdir(exist_ok=True)
    if bmm:
        save_file(bmm, str(REFS / f"{name}-bmm-weights.safetensors"), metadata={"format": "pt"})
        os.chmod(REFS / f"{name}-bmm-weights.safetensors", 0o644)
    save_file({"model.input_ids": ids, "model.logits": logits, "model.greedy": seq, "model.top2_margin": margins},
              str(REFS / f"{name}.safetensors"), metadata={"format": "pt"})
    os.chmod(REFS / f"{name}.safetensors", 0o644)
    meta = {
        "fixture": name, "tensors_file": f"{name}.safetensors",
        "quant_algo": hq["quantization"]["quant_algo"],
        "kv_cache_quant_algo": hq["quantization"].get("kv_cache_quant_algo"),
        "group_size": hq["quantization"].get("group_size"), "modelopt_config": cfg_name,
        "versions": {"nvidia-modelopt": modelopt.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": sys.version.split()[0]},
        "architecture": type(model).__name__,
        "reference": f"ModelOpt {modelopt.__version__} fake-quant model, re-balanced as the export does "
                     "(make_fixtures.prepare_like_export on a deep copy), forward on CPU with pure-torch "
                     "stand-ins for its CUDA-only fake-quant ops",
        "standin_op_calls": dict(STANDIN_CALLS),
        "init": {"random_seed": SEED, "how": "M(config) in fp32, saved, reloaded in bf16, 2-D+ weights "
                                             "redrawn N(0, 0.08) (seed + 3)"},
        "seconds": round(time.time() - t0, 1),
    }
    (REFS / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: {meta['quant_algo']} in {meta['seconds']} s; stand-in calls {STANDIN_CALLS}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"steps: {STEPS}")
    args = ap.parse_args()
    install_standins()
    for name in args.only or STEPS:
        step(name)


if __name__ == "__main__":
    main()
