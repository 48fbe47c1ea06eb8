#!/usr/bin/env python
"""Real ModelOpt exports of multimodal ``ForConditionalGeneration`` checkpoints (text side quantized).

Gemma 3 (``Gemma3ForConditionalGeneration``, SigLIP vision tower), Mistral 3
(``Mistral3ForConditionalGeneration``, Pixtral vision tower + patch-merger projector) and Llama 4
(``Llama4ForConditionalGeneration``, Llama 4 vision model + projector; text experts quantized in
place), tiny random configs, quantized with ModelOpt's stock ``NVFP4_DEFAULT_CFG`` (whose
``*vision_tower*`` / ``*vision_model*`` / ``*multi_modal_projector*`` entries leave the vision side
unquantized, as in NVIDIA's releases), calibrated on random text tokens and exported with
``export_hf_checkpoint``. References in the schema of ``make_fixtures.py``
(``references/<fixture>.{json,safetensors}``) from ModelOpt's fake-quant model re-balanced as the
export does (``make_fixtures.quantize_export_reference``), text-only inputs.

Run in the nvidia-modelopt 0.47.0 venv of tests/data/README.md:

    ~/fixenv/bin/python tests/data/make_fixtures_mm.py [--only gemma3mm-nvfp4 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent
sys.path.insert(0, str(DATA))
import make_fixtures as MF  # noqa: E402

warnings.filterwarnings("ignore")
torch.set_num_threads(int(os.environ.get("MOTENSOR_FIXTURE_THREADS", "2")))

VOCAB = 256
# Image / special token ids at the top of the vocabulary; prompts and calibration use ids below them.
IMAGE_TOKEN, BOI, EOI = 255, 253, 254
TEXT_IDS = 250


def specs():
    import transformers as T

    text = dict(hidden_size=128, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=0,
                eos_token_id=1, pad_token_id=0, head_dim=32)
    return {
        "gemma3mm": lambda: (T.Gemma3ForConditionalGeneration, T.Gemma3Config(
            text_config=T.Gemma3TextConfig(**text, sliding_window=64),
            vision_config=T.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=56, patch_size=14),
            mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN, boi_token_index=BOI, eoi_token_index=EOI,
            tie_word_embeddings=True), False),
        "mistral3": lambda: (T.Mistral3ForConditionalGeneration, T.Mistral3Config(
            text_config=T.MistralConfig(**text, tie_word_embeddings=False),
            vision_config=T.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, head_dim=16, image_size=56, patch_size=14),
            image_token_index=IMAGE_TOKEN, spatial_merge_size=2, vision_feature_layer=-1,
            tie_word_embeddings=False), False),
        "llama4mm": lambda: (T.Llama4ForConditionalGeneration, T.Llama4Config(
            text_config=T.Llama4TextConfig(**{**text, "intermediate_size": 64}, intermediate_size_mlp=128,
                                           num_local_experts=4, num_experts_per_tok=1, interleave_moe_layer_step=2,
                                           tie_word_embeddings=False, attention_chunk_size=64,
                                           no_rope_layers=[1, 0], use_qk_norm=True),
            # intermediate_size = hidden_size / pixel_shuffle_ratio^2: the adapter MLP's input width
            vision_config=T.Llama4VisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=56, patch_size=14,
                                               vision_output_dim=128, projector_input_dim=128,
                                               projector_output_dim=128, pixel_shuffle_ratio=0.5),
            image_token_index=IMAGE_TOKEN, boi_token_index=BOI, eoi_token_index=EOI,
            tie_word_embeddings=False), True),
    }


STEPS = ["gemma3mm-nvfp4", "mistral3-nvfp4", "llama4mm-nvfp4", "gemma3mm-w4a16_awq", "mistral3-w4a16_awq"]


def build(arch: str):
    M, cfg, redraw = specs()[arch]()
    cfg.architectures = [M.__name__]
    torch.manual_seed(MF.SEED)
    with tempfile.TemporaryDirectory() as td:  # save + from_pretrained(bf16), as a user loads a model
        M(cfg).save_pretrained(td)
        model = M.from_pretrained(td, dtype=torch.bfloat16).eval()
    if redraw:  # Llama 4's default init is too flat (std 0.02) for a logit comparison to mean much
        with torch.no_grad():
            g = torch.Generator().manual_seed(MF.SEED + 3)
            for _, p in model.named_parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.08)
    with torch.no_grad():  # Gemma 3 initialises its projector (mm_input_projection_weight) to zeros
        g = torch.Generator().manual_seed(MF.SEED + 4)
        for _, p in model.named_parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def step(name: str):
    arch, slug = name.split("-")
    model = build(arch)
    g = torch.Generator().manual_seed(MF.SEED + 2)
    batches = [torch.randint(2, TEXT_IDS, (1, 64), generator=g) for _ in range(8)]
    ids = torch.randint(2, TEXT_IDS, (1, MF.N_PROMPT), generator=g)
    factory, text = MF.LLAMA_FORMATS[slug]
    MF.quantize_export_reference(
        name, model, factory(), text, MF.make_forward_loop(batches), ids, None, slug.upper(),
        extra_meta={"init": {"random_seed": MF.SEED, "how": "M(config) in fp32 with torch.manual_seed, saved, "
                             "reloaded with from_pretrained(dtype=bfloat16)"
                             + ("; 2-D+ weights redrawn N(0, 0.08) (seed + 3)" if specs()[arch]()[2] else "")
                             + "; all-zero 2-D+ weights (Gemma 3's projector) drawn N(0, 0.02) (seed + 4)"},
                    "inputs": f"text only: random ids in [2, {TEXT_IDS}) (image/special tokens above)"},
        ref_weights=("model.language_model.layers.0.self_attn.k_proj",))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"steps: {STEPS}")
    args = ap.parse_args()
    MF.install_standin()
    for name in args.only or STEPS:
        MF.log(f"== {name}")
        step(name)


if __name__ == "__main__":
    main()
