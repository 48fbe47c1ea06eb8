"""LoRA training step on an 8B-shaped NVFP4 checkpoint vs the same LoRA on bf16: tokens/s and peak
GPU memory (issue 14: the goal is >= 3x less memory at >= 0.8x the speed).

    python benches/lora.py                    # GPU: 8b shape, nvfp4, seq 2048, batch 1
    python benches/lora.py --smoke            # CPU dry run: tiny shape, 2 steps (tests/test_lora_bench.py)

Checkpoints are random weights in exact ModelOpt layout (benches/synthetic.py); the bf16 peer is the
same architecture built by transformers with random bf16 weights. Both get the same LoraConfig
(r=16, all linear layers), AdamW on the adapters, gradient checkpointing on. Rows: case
``<shape>-lora-seq<S>``, impls ``motensor_<quant_algo>_lora`` and ``hf_bf16_lora``, metrics
``tok/s`` (min time of the timed steps) and ``GiB`` (peak allocated; on the CPU: max RSS growth).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import synthetic  # noqa: E402


def _lora_config():
    import peft

    return peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")


def _step_stats(model, ids: torch.Tensor, steps: int, device: torch.device) -> tuple[float, float]:
    """(tokens/s from the fastest step, peak memory GiB) of ``steps`` AdamW training steps."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = common._status_kib("VmRSS")
    best = float("inf")
    for _ in range(steps):
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = max(common._status_kib("VmHWM") - rss0, 0) / 2**20
    return ids.numel() / best, peak


def _prepare(model):
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="8b", choices=sorted(synthetic.SHAPES))
    p.add_argument("--format", default="nvfp4", choices=sorted(synthetic.FORMATS))
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny shape on the CPU, 2 steps")
    p.add_argument("--quick", action="store_true", help="make gpu-check's size: sequence 512, 3 steps")
    p.add_argument("--no-hf", action="store_true", help="skip the bf16 peer")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--cache-dir", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        args.shape, args.seq, args.steps = "tiny", 32, 2
    elif args.quick:
        args.seq, args.steps = 512, 3
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cache = args.cache_dir or (args.out / ".cache" if args.smoke else synthetic.CACHE_DIR)
    path = synthetic.ensure_checkpoint(args.shape, args.format, cache)
    algo = synthetic.FORMATS[args.format]
    case = f"{args.shape}-lora-seq{args.seq}"
    rows = []

    import motensor
    import motensor.lora

    model = motensor.from_pretrained(path, dtype=dtype, device=str(device))
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)
    pm = motensor.lora.get_peft_model(_prepare(model), _lora_config())
    tps, mem = _step_stats(pm, ids, args.steps, device)
    rows += [{"case": case, "impl": f"motensor_{algo}_lora", "metric": "tok/s", "value": tps},
             {"case": case, "impl": f"motensor_{algo}_lora", "metric": "GiB", "value": mem}]
    del pm, model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if not args.no_hf:
        import peft
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(path)
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        with torch.device(device):
            hf = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        pm = peft.get_peft_model(_prepare(hf), _lora_config())
        tps, mem = _step_stats(pm, ids, args.steps, device)
        rows += [{"case": case, "impl": "hf_bf16_lora" if dtype == torch.bfloat16 else "hf_fp32_lora",
                  "metric": "tok/s", "value": tps},
                 {"case": case, "impl": "hf_bf16_lora" if dtype == torch.bfloat16 else "hf_fp32_lora",
                  "metric": "GiB", "value": mem}]
    cmd = "python benches/lora.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = common.write_results("lora", rows, cmd + f" (min of {args.steps} steps)", args.out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
