"""One routed-experts (MoE) layer: motensor's grouped kernel vs its expert loop vs transformers' bf16
experts, at Qwen3-30B-A3B and DeepSeek-V3 layer shapes, batch 1 and 64 tokens.

    python benches/moe.py                  # GPU: both shapes, NVFP4, W4A16_AWQ, FP8_PB_WO, batch 1 and 64
    python benches/moe.py --quick          # make gpu-check's size: NVFP4 + W4A16_AWQ, DeepSeek-V3 with 64 experts
    python benches/moe.py --smoke          # CPU dry run: a tiny layer (tests/test_moe_bench.py)

The layer is :class:`motensor.models.QuantExperts` holding one QuantLinear per expert projection
(random bf16 weights N(0, 0.02) quantized with ``QuantLinear.from_float``; NVFP4 with a calibrated
input amax of 4), run with ``mode="grouped"`` (one Triton launch per projection over every routed
(token, expert) pair, sorted by expert once per forward) and ``mode="loop"`` (expert by expert).
The bf16 peer is transformers' own experts module (``Qwen3MoeExperts``, the fused 3-D
``gate_up_proj`` / ``down_proj`` in bf16, transformers' default experts implementation) at the same
shape. All three get the same routing (random distinct top-k experts per token, softmax weights).

Rows: case ``<shape>-E<experts>-b<tokens>``; impls ``motensor_<quant_algo>_grouped``,
``motensor_<quant_algo>_loop``, ``hf_bf16_experts``; metric ``us`` (minimum over the timed calls,
each timed alone with CUDA events), plus per format ``grouped_vs_loop`` and ``grouped_vs_bf16``
(speed-ups, peer time / grouped time, same run) and ``rel_diff_vs_loop`` (max |grouped - loop| /
max |loop|: the two paths round alike, so this is ~0).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# name -> (hidden H, expert intermediate inter, experts E, top-k)
SHAPES = {
    "qwen3-30b-a3b": (2048, 768, 128, 8),
    "deepseek-v3": (7168, 2048, 256, 8),
    "tiny": (128, 128, 8, 2),
}
FORMATS = ("NVFP4", "W4A16_AWQ", "FP8_PB_WO")
QUICK_FORMATS = ("NVFP4", "W4A16_AWQ")
QUICK_EXPERTS = {"deepseek-v3": 64}  # fewer experts in --quick: setup time (the per-expert work is the same)
INPUT_AMAX = 4.0


def quant_experts(algo: str, H: int, inter: int, E: int, device: torch.device, dtype: torch.dtype):
    """A QuantExperts of ``E`` experts: one quantized random Linear per projection, copied per expert
    (each expert has its own memory, as in a checkpoint)."""
    import torch.nn.functional as F

    import motensor
    from motensor.models import QuantExperts

    g = torch.Generator(device="cpu").manual_seed(0)
    kw = {"input_amax": INPUT_AMAX} if algo == "NVFP4" else {}

    def one(n: int, k: int):
        lin = nn.Linear(k, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, k, generator=g) * 0.02)
        return motensor.QuantLinear.from_float(lin.to(device=device, dtype=dtype), algo, **kw)

    protos = {"gate": one(inter, H), "up": one(inter, H), "down": one(H, inter)}
    # Deep copies that keep the format/recipe singletons (the grouped path checks them by identity).
    keep = lambda q: {id(v): v for v in vars(q).values() if not isinstance(v, (torch.Tensor, nn.Module, dict))}
    parts = {p: [copy.deepcopy(q, keep(q)) for _ in range(E)] for p, q in protos.items()}
    return QuantExperts(parts["gate"], parts["up"], parts["down"], F.silu, name=f"bench.{algo}", mode="loop")


def bf16_experts(H: int, inter: int, E: int, k: int, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, str]:
    """transformers' own fused experts module at this shape (bf16 3-D parameters), with the experts
    implementation a loaded model gets by default (``grouped_mm`` where torch has it, else
    ``eager``). Returns the module and that implementation's name."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    for impl in ("grouped_mm", "eager"):
        cfg = Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=inter, num_experts=E, num_experts_per_tok=k,
                             hidden_act="silu", experts_implementation=impl)
        with torch.device(device):
            m = Qwen3MoeExperts(cfg).to(dtype)
        g = torch.Generator(device=device).manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).to(p.dtype) * 0.02)
            try:
                ids, w = routing(2, E, k, device, dtype)
                m(torch.zeros(2, H, device=device, dtype=dtype), ids, w)
            except Exception as e:  # noqa: BLE001 - this torch/transformers cannot run it: the next one
                print(f"transformers experts_implementation={impl} unavailable ({type(e).__name__}: {e})", flush=True)
                continue
        return m.eval(), impl
    raise RuntimeError("no transformers experts implementation ran")


def routing(T: int, E: int, k: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(T * 1000 + E)
    ids = torch.rand(T, E, generator=g).topk(k, dim=-1).indices
    w = torch.softmax(torch.randn(T, k, generator=g), dim=-1)
    return ids.to(device), w.to(device=device, dtype=dtype)


def time_us(fn: Callable[[], object], device: torch.device, reps: int, warmup: int = 2) -> float:
    """Minimum microseconds of ``reps`` calls, each timed alone (CUDA events on a GPU)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        best = float("inf")
        for _ in range(reps):
            if device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                a.record()
                fn()
                b.record()
                b.synchronize()
                best = min(best, a.elapsed_time(b) * 1e3)
            else:
                t = time.perf_counter()
                fn()
                best = min(best, (time.perf_counter() - t) * 1e6)
    return best


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="qwen3-30b-a3b,deepseek-v3", help=f"comma-separated, of {sorted(SHAPES)}")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, of {FORMATS}")
    p.add_argument("--tokens", default="1,64", help="batch sizes (tokens), comma-separated")
    p.add_argument("--experts", type=int, default=None, help="override the shapes' expert count")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny layer on the CPU, NVFP4 and W4A16_AWQ, 2 calls")
    p.add_argument("--quick", action="store_true",
                   help="make gpu-check's size: NVFP4 + W4A16_AWQ, DeepSeek-V3 with 64 experts, 10 calls")
    p.add_argument("--max-seconds", type=float, default=None, help="start no new case after this; write what ran")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    formats = [f.strip().upper() for f in args.formats.split(",") if f.strip()]
    experts_override: dict[str, int] = {}
    if args.smoke:
        shapes, formats, args.reps = ["tiny"], list(QUICK_FORMATS), 2
    elif args.quick:
        formats, args.reps = list(QUICK_FORMATS), 10
        experts_override = dict(QUICK_EXPERTS)
    bad = [s for s in shapes if s not in SHAPES] + [f for f in formats if f not in FORMATS]
    if bad:
        p.error(f"unknown shape/format {bad}")
    tokens = [int(t) for t in args.tokens.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16
    rows: list[dict] = []
    unavailable: dict[str, str] = {}  # case + format -> why the grouped path cannot run it
    stopped = None

    def out_of_time() -> bool:
        return args.max_seconds is not None and time.monotonic() - t0 > args.max_seconds

    for shape in shapes:
        H, inter, E, k = SHAPES[shape]
        E = args.experts or experts_override.get(shape, E)
        peer, peer_impl = bf16_experts(H, inter, E, k, device, dtype)
        peer_us: dict[int, float] = {}
        for T in tokens:
            x = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to(device=device, dtype=dtype)
            ids, w = routing(T, E, k, device, dtype)
            peer_us[T] = time_us(lambda x=x, ids=ids, w=w, peer=peer: peer(x, ids, w), device, args.reps)
            rows.append({"case": f"{shape}-E{E}-b{T}", "impl": "hf_bf16_experts", "metric": "us", "value": peer_us[T],
                         "note": f"experts_implementation={peer_impl}"})
        del peer
        for algo in formats:
            if out_of_time():
                stopped = f"stopped before {shape} {algo}: --max-seconds {args.max_seconds:g}"
                break
            layer = quant_experts(algo, H, inter, E, device, dtype)
            grouped_ok = layer._grouped_why_not is None
            for T in tokens:
                case = f"{shape}-E{E}-b{T}"
                x = torch.randn(T, H, generator=torch.Generator().manual_seed(T)).to(device=device, dtype=dtype)
                ids, w = routing(T, E, k, device, dtype)
                layer.mode = "loop"
                with torch.no_grad():
                    y_loop = layer(x, ids, w).float()
                loop_us = time_us(lambda x=x, ids=ids, w=w, layer=layer: layer(x, ids, w), device, args.reps)
                rows.append({"case": case, "impl": f"motensor_{algo}_loop", "metric": "us", "value": loop_us})
                if not grouped_ok:
                    unavailable[f"{case} {algo}"] = str(layer._grouped_why_not)
                    continue
                layer.mode = "grouped"
                with torch.no_grad():
                    y = layer(x, ids, w).float()  # (compiles the Triton kernels on first use)
                diff = ((y - y_loop).abs().max() / y_loop.abs().max().clamp_min(1e-30)).item()
                g_us = time_us(lambda x=x, ids=ids, w=w, layer=layer: layer(x, ids, w), device, args.reps)
                rows += [
                    {"case": case, "impl": f"motensor_{algo}_grouped", "metric": "us", "value": g_us},
                    {"case": case, "impl": f"motensor_{algo}_grouped", "metric": "grouped_vs_loop", "value": loop_us / g_us},
                    {"case": case, "impl": f"motensor_{algo}_grouped", "metric": "grouped_vs_bf16",
                     "value": peer_us[T] / g_us},
                    {"case": case, "impl": f"motensor_{algo}_grouped", "metric": "rel_diff_vs_loop", "value": diff},
                ]
                print(f"{case} {algo}: grouped {g_us:.1f} us, loop {loop_us:.1f} us, bf16 {peer_us[T]:.1f} us "
                      f"(x{loop_us / g_us:.2f} vs loop, x{peer_us[T] / g_us:.2f} vs bf16; rel diff {diff:.2g})",
                      flush=True)
            del layer
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if stopped:
            break
    cmd = "python benches/moe.py " + " ".join(argv if argv is not None else sys.argv[1:])
    extra = {"note": f"minimum of {args.reps} calls per figure, each timed alone; bf16 activations"}
    if stopped:
        extra["status"] = stopped
    if unavailable:
        extra["grouped_unavailable"] = unavailable
    out = common.write_results("moe", rows, cmd, args.out, device=str(device.type), **extra)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
