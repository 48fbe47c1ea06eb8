"""The ``motensor`` command line."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

EPILOG = """\
examples:
  motensor inspect tests/data/demo
  motensor load tests/data/demo --device cpu
  motensor generate tests/data/demo --prompt "And God said" --max-new-tokens 40 --device cpu
  motensor bench path/to/Llama-3.1-8B-NVFP4 --device cuda
"""


def _quiet_transformers(args: argparse.Namespace) -> None:
    """transformers' own notices (generation flags, config checks) are noise on a command line."""
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str):
    from motensor.args import DTYPE_NAMES

    if name.lower() == "auto":
        return "auto"
    try:
        return DTYPE_NAMES[name.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown dtype {name!r} (one of auto, {', '.join(DTYPE_NAMES)})") from None


def _hub(args: argparse.Namespace) -> dict:
    """The Hub options of a command (PATH may be a repo id)."""
    return {"revision": args.revision, "cache_dir": args.cache_dir, "local_files_only": args.local_files_only}


#: Packages of the ``models`` extra: a command that needs one names the extra, not a traceback.
_MODELS_EXTRA = ("transformers", "tokenizers", "huggingface_hub", "accelerate")


def _counts(names_formats) -> str:
    counts: dict[str, int] = {}
    for fmt in names_formats:
        counts[fmt] = counts.get(fmt, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


# -- commands ------------------------------------------------------------------------------------
def _inspect(args: argparse.Namespace) -> int:
    import motensor

    ckpt = motensor.open(args.path, **_hub(args))
    print(ckpt.summary())
    return 0


def _load(args: argparse.Namespace) -> int:
    import motensor

    device = args.device or _default_device()
    if args.model:
        _quiet_transformers(args)
        t0 = time.perf_counter()
        model = motensor.from_pretrained(args.path, device=device, dtype=args.dtype, progress=not args.quiet,
                                         **_hub(args))
        seconds = time.perf_counter() - t0
        r = model.motensor_report
        print(f"loaded {r.architecture} ({r.quant_algo or 'unquantized'}) onto {device} in {seconds:.2f} s")
        print(f"  tensors: {r.load_stats}")
        print(f"  modules: {_counts_dict(r.module_counts(model))}"
              + (f"; {len(r.quantized_experts)} quantized expert containers" if r.quantized_experts else ""))
        if r.tied:
            print(f"  tied: {', '.join(r.tied)}")
        if r.kv_cache_scales:
            print(f"  FP8 KV-cache scales on {r.kv_cache_scales} attention modules")
        return 0
    loaded = motensor.load(args.path, device=device, dtype=args.dtype, progress=not args.quiet, **_hub(args))
    print(f"loaded {loaded.checkpoint.root} onto {loaded.device}: {loaded.stats}")
    print(f"  quantized modules: {len(loaded.modules)} ({_counts(m.info.quant_algo for m in loaded.modules.values())})")
    print(f"  other tensors: {len(loaded.tensors)} (embeddings, norms, excluded layers, KV-cache scales)")
    return 0


def _counts_dict(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def _generate(args: argparse.Namespace) -> int:
    import torch

    import motensor

    _quiet_transformers(args)
    device = args.device or _default_device()
    tok = motensor.load_tokenizer(args.path, **_hub(args))
    t0 = time.perf_counter()
    model = motensor.from_pretrained(args.path, device=device, dtype=args.dtype, **_hub(args))
    load_s = time.perf_counter() - t0
    enc = tok(args.prompt, return_tensors="pt").to(device)
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0)
    if args.temperature > 0:
        gen.update(temperature=args.temperature, top_p=args.top_p)
        torch.manual_seed(args.seed)
    if tok.pad_token_id is None:
        gen["pad_token_id"] = tok.eos_token_id
    t1 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, **gen)
    gen_s = time.perf_counter() - t1
    new = out.shape[1] - enc["input_ids"].shape[1]
    text = tok.decode(out[0], skip_special_tokens=True)
    print(text, flush=True)
    if not args.quiet:
        print(f"[{model.motensor_report.architecture} {model.motensor_report.quant_algo} on {device}: "
              f"loaded in {load_s:.2f} s, {new} tokens in {gen_s:.2f} s ({new / max(gen_s, 1e-9):.1f} tok/s)]",
              file=sys.stderr)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    import motensor
    from motensor.models import bench

    _quiet_transformers(args)
    device = torch.device(args.device or _default_device())
    t0 = time.perf_counter()
    model = motensor.from_pretrained(args.path, device=device, dtype=args.dtype, **_hub(args))
    bench.sync(device)
    load_s = time.perf_counter() - t0
    first_s = bench.first_token(model, args.prompt_len)
    r = model.motensor_report
    rows = [
        {"metric": "load_s", "value": load_s},
        {"metric": "load_GB/s", "value": r.load_stats.gbps},
        {"metric": "load_to_first_token_s", "value": load_s + first_s},
    ]
    for b in args.batch:
        d = bench.decode(model, b, args.prompt_len, args.new_tokens, repeat=args.repeat)
        rows.append({"metric": f"decode_b{b}_tok/s", "value": d.tokens_per_s})
    pf = bench.prefill(model, 1, args.prefill_len, repeat=args.repeat)
    rows.append({"metric": f"prefill_{args.prefill_len}_tok/s", "value": pf})
    if args.json:
        print(json.dumps({"checkpoint": str(args.path), "architecture": r.architecture, "quant_algo": r.quant_algo,
                          "device": str(device), "rows": rows}, indent=2))
        return 0
    print(f"{r.architecture} ({r.quant_algo or 'unquantized'}) on {device}, {args.dtype}, best of {args.repeat}")
    print(f"  load:             {load_s:8.2f} s  ({r.load_stats.gbps:.2f} GB/s for the tensors)")
    print(f"  load to 1st tok:  {load_s + first_s:8.2f} s  (prompt {args.prompt_len})")
    for row in rows[3:-1]:
        b = row["metric"].split("_")[1][1:]
        print(f"  decode batch {b:>3}: {row['value']:8.1f} tok/s (prompt {args.prompt_len}, {args.new_tokens} new)")
    print(f"  prefill:          {pf:8.1f} tok/s ({args.prefill_len} tokens)")
    return 0


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="motensor",
        description="NVIDIA ModelOpt checkpoints in plain PyTorch: inspect them, load them onto a GPU, run them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what motensor does (INFO level)")
    try:
        from motensor import __version__

        p.add_argument("--version", action="version", version=f"motensor {__version__}")
    except Exception:  # pragma: no cover - extension not built
        pass
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def hub_args(s):
        g = s.add_argument_group("Hugging Face Hub repo ids (PATH = org/name)")
        g.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
        g.add_argument("--cache-dir", default=None, help="Hugging Face cache directory (default: HF_HUB_CACHE)")
        g.add_argument("--local-files-only", action="store_true",
                       help="use the cache only, no network (also: HF_HUB_OFFLINE=1)")

    s = sub.add_parser("inspect", help="print the modules, formats and sizes of a checkpoint",
                       description="Print a checkpoint's quantization metadata and a table of its quantized "
                                   "modules (format, shape, group size, bytes). Reads headers only.")
    s.add_argument("path", help="checkpoint directory, .safetensors file or Hugging Face Hub repo id")
    hub_args(s)
    s.set_defaults(func=_inspect)

    def device_args(s):
        hub_args(s)
        s.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if available, else cpu)")
        s.add_argument("--dtype", type=_dtype, default="auto",
                       help="activation / unquantized weight dtype (default: auto = the checkpoint's, bf16)")

    s = sub.add_parser("load", help="load a checkpoint onto a device and report the speed",
                       description="Load every tensor of a checkpoint onto a device in motensor's kernel layout "
                                   "(motensor.load) and report bytes, seconds, GB/s and modules per format. With "
                                   "--model, build the whole transformers model (motensor.from_pretrained) instead.")
    s.add_argument("path", help="checkpoint directory or Hugging Face Hub repo id")
    device_args(s)
    s.add_argument("--model", action="store_true", help="build the transformers model, not only the tensors")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_load)

    s = sub.add_parser("generate", help="generate text from a prompt",
                       description="Build the model (motensor.from_pretrained) and its tokenizer from the checkpoint "
                                   "directory and print the prompt followed by the generated text (greedy unless "
                                   "--temperature is set).")
    s.add_argument("path", help="checkpoint directory or Hub repo id (with tokenizer files)")
    s.add_argument("-p", "--prompt", required=True, help="the text to continue")
    s.add_argument("-n", "--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    device_args(s)
    s.add_argument("--temperature", type=float, default=0.0, help="sample with this temperature (default: 0, greedy)")
    s.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold when sampling (default: 1)")
    s.add_argument("--seed", type=int, default=0, help="random seed when sampling (default: 0)")
    s.add_argument("-q", "--quiet", action="store_true", help="print only the text (no timing line on stderr)")
    s.set_defaults(func=_generate)

    s = sub.add_parser("bench", help="time loading, prefill and decode",
                       description="Time a checkpoint end to end: load seconds and GB/s, load-to-first-token, "
                                   "greedy decode tokens/s per batch size (time of N new tokens minus time of one), "
                                   "prefill tokens/s. Random prompt tokens; best of --repeat runs after a warm-up.")
    s.add_argument("path", help="checkpoint directory or Hugging Face Hub repo id")
    device_args(s)
    s.add_argument("--batch", type=int, nargs="+", default=[1], help="decode batch sizes (default: 1)")
    s.add_argument("--prompt-len", type=int, default=128, help="decode prompt length (default: 128)")
    s.add_argument("--new-tokens", type=int, default=64, help="decode tokens per run (default: 64)")
    s.add_argument("--prefill-len", type=int, default=2048, help="prefill length (default: 2048)")
    s.add_argument("--repeat", type=int, default=3, help="timed runs per figure, best kept (default: 3)")
    s.add_argument("--json", action="store_true", help="print the figures as JSON")
    s.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from motensor.errors import MotensorError

    try:
        return args.func(args)
    except MotensorError as e:
        print(f"motensor: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if missing.split(".")[0] not in _MODELS_EXTRA and "motensor[models]" not in str(e):
            raise
        print(f"motensor: error: `motensor {args.command}` needs {missing.split('.')[0] or 'transformers'}, "
              "which is not installed: pip install 'motensor[models]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
