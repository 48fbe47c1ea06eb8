#!/usr/bin/env python
"""Real ModelOpt exports of a tiny gpt-oss (``GptOssForCausalLM``), with ModelOpt fake-quant references.

nvidia-modelopt 0.47.0 quantizes transformers' ``GptOssExperts`` in place (``_QuantGptOssExperts``:
the 3-D ``gate_up_proj [E, H, 2I]`` / ``down_proj [E, I, H]`` parameters fake-quantized transposed,
one input quantizer per projection shared by all experts) and its unified HF export writes them like
Llama 4's: ``mlp.experts.gate_up_proj`` (NVFP4: U8 ``[E, H/2, 2I]``, packed along H; FP8:
``[E, H, 2I]``) with ``gate_up_proj_weight_scale`` / ``_weight_scale_2`` / ``_input_scale`` beside
it, and the expert biases ``gate_up_proj_bias [E, 2I]`` / ``down_proj_bias [E, H]`` as plain bf16.
Gate and up columns are **interleaved** (gate = ``[..., ::2]``, up = ``[..., 1::2]``). The router
(``mlp.router``, a ``GptOssTopKRouter`` with a bias, not an ``nn.Linear``) stays bf16 and is listed
in ``exclude_modules``; attention q/k/v/o have biases; ``self_attn.sinks`` is a plain tensor.

References as in ``make_fixtures.py`` (``references/<fixture>.{json,safetensors}``: ``model.input_ids``,
``model.logits``, ``model.greedy``, ``model.top2_margin``), from ModelOpt's fake-quant model: a
deep copy of the calibrated model on which ``prepare_like_export`` (the export's own re-balancing)
was run, forward on the CPU (NVFP4 through the pure-torch stand-in of ``make_fixtures.py``).
``dequant_check`` in the JSON compares FORMATS.md's dequant of every exported in-place expert
parameter with ModelOpt's fake-quant weight (``_transposed_quantize``) after bf16 rounding.

Run in the nvidia-modelopt 0.47.0 venv of tests/data/README.md:

    ~/fixenv/bin/python tests/data/make_fixtures_gpt_oss.py [--only gpt_oss-nvfp4 ...]
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
from make_fixtures import (N_NEW, N_PROMPT, SEED, STANDIN_CALLS, dq_fp8_tensor, dq_nvfp4,  # noqa: E402
                           install_standin, prepare_like_export, versions)

warnings.filterwarnings("ignore")
torch.set_num_threads(int(os.environ.get("MOTENSOR_FIXTURE_THREADS", "2")))

FORMATS = {"nvfp4": ("NVFP4_DEFAULT_CFG", "NVFP4"), "fp8": ("FP8_DEFAULT_CFG", "FP8")}
STEPS = ["gpt_oss-nvfp4", "gpt_oss-fp8"]
BMM_WEIGHTS_STORED = "model.layers.0.mlp.experts.gate_up_proj"  # NVFP4 only (size budget)


def build():
    import transformers as T

    # 2 layers (layer 0 sliding-window attention with a window of 8 < the 16-token prompt, layer 1
    # full), 4 experts top-2, intermediate 96 (2I = 192 != H = 128, so a transposed or
    # de-interleaved gate/up cannot pass by shape), yarn RoPE as the released models use.
    cfg = T.GptOssConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         vocab_size=256, intermediate_size=96, num_hidden_layers=2, num_local_experts=4,
                         num_experts_per_tok=2, sliding_window=8, max_position_embeddings=131072,
                         bos_token_id=0, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False)
    cfg.architectures = ["GptOssForCausalLM"]
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as td:
        T.GptOssForCausalLM(cfg).save_pretrained(td)
        model = T.GptOssForCausalLM.from_pretrained(td, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        # The default init is too flat (std 0.02, zero expert biases) for a comparison to mean much:
        # matrices N(0, 0.08); expert gate/up biases N(0, 4) so that gpt-oss's clamp (limit 7) bites;
        # other biases, router bias and attention sinks N(0, 0.5); norms stay 1.
        g = torch.Generator().manual_seed(SEED + 3)
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.08)
            elif n.endswith("gate_up_proj_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 4.0)
            elif "norm" not in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
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


def bmm_fake_quant_weights(model) -> dict[str, torch.Tensor]:
    """ModelOpt's fake-quant weight of every in-place expert parameter, ``[E, K, N]`` as stored."""
    from modelopt.torch.quantization.plugins.huggingface import _transposed_quantize

    out = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            for p in ("gate_up_proj", "down_proj"):
                q = getattr(mod, f"{p}_weight_quantizer", None)
                if q is not None and q.is_enabled:
                    w = mod._parameters[p]  # the raw parameter (the attribute is the quantized one)
                    out[f"{name}.{p}"] = _transposed_quantize(w, q).detach().clone()
    return out


def bmm_dequant(algo: str, st: dict, name: str) -> torch.Tensor:
    """FORMATS.md dequant of an exported in-place parameter -> ``[E, K, N]`` fp32."""
    w, ws = st[name], st[name + "_weight_scale"]
    if algo == "NVFP4":
        ws2 = st[name + "_weight_scale_2"]
        # U8 [E, K/2, N], scales [E, K/16, N]: per expert the [N, K] Linear layout, transposed back.
        return torch.stack([dq_nvfp4(w[e].T.contiguous(), ws[e].T.contiguous(), ws2).T for e in range(w.shape[0])])
    return torch.stack([dq_fp8_tensor(w[e], ws[e] if ws.dim() else ws) for e in range(w.shape[0])])


def step(name: str):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from safetensors.torch import load_file, save_file

    slug = name.split("-")[1]
    cfg_name, algo = FORMATS[slug]
    t0 = time.time()
    STANDIN_CALLS.clear()
    model = build()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(SEED + 2)
    batches = [torch.randint(2, vocab, (1, 64), generator=g) for _ in range(8)]
    ids = torch.randint(2, vocab, (1, N_PROMPT), generator=g)

    def loop(m):
        with torch.no_grad():
            for b in batches:
                m(b)

    model = mtq.quantize(model, copy.deepcopy(getattr(mtq, cfg_name)), loop)
    ref = copy.deepcopy(model)
    prepare_like_export(ref)
    logits, seq, margins = references(ref, ids)
    fq = bmm_fake_quant_weights(ref)
    out = DATA / name
    shutil.rmtree(out, ignore_errors=True)
    export_hf_checkpoint(model, export_dir=str(out))
    for f in out.iterdir():
        os.chmod(f, 0o644)
    hq = json.loads((out / "hf_quant_config.json").read_text())
    assert hq["quantization"]["quant_algo"].upper() == algo, hq
    st = load_file(str(out / "model.safetensors"))
    check = {}
    for n, w in fq.items():
        d = (bmm_dequant(algo, st, n).to(torch.bfloat16).float() - w.float()).abs()
        check[n] = {"max_abs_after_bf16_rounding": float(d.max()), "n_diff": int((d > 0).sum()), "numel": d.numel()}
    tensors = {"model.input_ids": ids, "model.logits": logits, "model.greedy": seq, "model.top2_margin": margins}
    if algo == "NVFP4":
        tensors[f"weights.{BMM_WEIGHTS_STORED}"] = fq[BMM_WEIGHTS_STORED].contiguous()
    REFS.mkdir(exist_ok=True)
    save_file(tensors, str(REFS / f"{name}.safetensors"), metadata={"format": "pt"})
    os.chmod(REFS / f"{name}.safetensors", 0o644)
    meta = {
        "fixture": name, "tensors_file": f"{name}.safetensors",
        "quant_algo": hq["quantization"]["quant_algo"],
        "kv_cache_quant_algo": hq["quantization"].get("kv_cache_quant_algo"),
        "group_size": hq["quantization"].get("group_size"), "modelopt_config": cfg_name,
        "versions": versions(), "architecture": type(model).__name__,
        "reference": "ModelOpt fake-quant model (deep copy, re-balanced like the export by prepare_like_export), "
                     "forward on CPU; NVFP4 through the pure-torch stand-in for its CUDA-only block fake quant",
        "standin_op_calls": dict(STANDIN_CALLS),
        "bmm_dequant_check": check,
        "weights_stored": [BMM_WEIGHTS_STORED] if algo == "NVFP4" else [],
        "weights_note": "weights.<param> = _transposed_quantize(param, its weight quantizer): ModelOpt's "
                        "fake-quant in-place expert weight [E, K, N] (bf16) on the re-balanced copy",
        "init": {"random_seed": SEED, "how": "M(config) in fp32, saved, reloaded in bf16; 2-D+ weights N(0, 0.08), "
                 "expert gate_up biases N(0, 4), other biases and sinks N(0, 0.5) (seed + 3); norms 1"},
        "seconds": round(time.time() - t0, 1),
    }
    (REFS / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: {meta['quant_algo']} in {meta['seconds']} s; dequant check {check}; "
          f"stand-in calls {dict(STANDIN_CALLS)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"steps: {STEPS}")
    args = ap.parse_args()
    install_standin()
    for name in args.only or STEPS:
        step(name)


if __name__ == "__main__":
    main()
