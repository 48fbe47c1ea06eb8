"""``python -m torch.distributed.run --nproc-per-node N -m motensor.parallel.check OUT.json CKPT [CKPT ...]``

Each rank loads each ``CKPT`` in turn with ``motensor.from_pretrained(..., tp_plan="auto")`` (and each
``--transformers CKPT`` with ``AutoModelForCausalLM.from_pretrained(..., tp_plan="auto")``, through motensor's
quantizer) on the CPU (gloo) or CUDA (NCCL), runs one forward over a fixed prompt, and rank 0 writes a JSON with the
logits and every rank's figures (keyed by checkpoint): bytes of quantized tensors held, checkpoint bytes planned and
measured read, load seconds. Used by ``tests/test_tp.py`` and ``benches/tp_load.py``; the same
figures for the single-process model come from :func:`single_process`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch


def _tokens(vocab: int, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, length), generator=g)


def _figures(model, t0: float) -> dict[str, Any]:
    from motensor.parallel import holds_bytes

    stats = model.motensor_report.load_stats
    return {
        "held_bytes": holds_bytes(model),
        "planned_read_bytes": stats.source_bytes,
        "measured_read_bytes": stats.read_bytes,
        "load_seconds": time.perf_counter() - t0,
        "fill_seconds": stats.fill_seconds,
    }


def single_process(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   forward: bool = True) -> dict[str, Any]:
    """The single-process model's logits and figures (the reference for the TP run)."""
    import motensor

    t0 = time.perf_counter()
    model = motensor.from_pretrained(path, device=device, dtype=dtype)
    out = _figures(model, t0)
    if forward:
        with torch.inference_mode():
            ids = _tokens(model.config.get_text_config().vocab_size).to(device)
            out["logits"] = model(ids).logits.float().cpu().tolist()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--no-forward", action="store_true", help="load only (the benchmark)")
    p.add_argument("--transformers", action="append", default=[], metavar="CKPT",
                   help="also load CKPT with transformers' AutoModelForCausalLM.from_pretrained(CKPT, tp_plan='auto') "
                        "(motensor's quantizer); its results are keyed 'transformers:CKPT'")
    p.add_argument("--transformers-ep", action="append", default=[], metavar="CKPT",
                   help="load CKPT with transformers' expert parallelism (DistributedConfig(tp_size=N, ep_size=N)); "
                        "keyed 'transformers-ep:CKPT'")
    a = p.parse_args(argv)

    import torch.distributed as dist

    dtype = getattr(torch, a.dtype)
    _warm_up(a.checkpoints + a.transformers + a.transformers_ep, a.device)
    results: dict[str, Any] = {}
    for path in a.checkpoints:
        results[path] = _one(path, a, dtype)
    for path in a.transformers:
        results[f"transformers:{path}"] = _one(path, a, dtype, front="transformers")
    for path in a.transformers_ep:
        results[f"transformers-ep:{path}"] = _one(path, a, dtype, front="transformers-ep")
    if dist.is_initialized():
        if dist.get_rank() == 0:
            with open(a.out, "w") as f:
                json.dump(results, f)
        dist.barrier()
        dist.destroy_process_group()
    return 0


def _warm_up(paths: list[str], device: str) -> None:
    """Imports the model classes and joins the process group before any load is timed (the
    first ``import transformers`` model class alone takes seconds)."""
    import os

    import transformers

    from motensor.parallel import tp

    for path in paths:
        try:
            with open(os.path.join(path, "config.json")) as f:
                getattr(transformers, json.load(f)["architectures"][0], None)
        except (OSError, ValueError, KeyError, IndexError):
            pass
    tp.setup(device)


def _load(path: str, a: argparse.Namespace, dtype: torch.dtype, front: str):
    import motensor

    if front == "motensor":
        return motensor.from_pretrained(path, device=a.device, dtype=dtype, tp_plan="auto")
    import warnings

    from transformers import AutoModelForCausalLM

    # transformers picks the device itself under tp_plan (cuda:LOCAL_RANK, or the CPU without a GPU).
    if front == "transformers-ep":
        import torch.distributed as dist
        from transformers.distributed import DistributedConfig

        world = dist.get_world_size()
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype,
                                                    distributed_config=DistributedConfig(tp_size=world, ep_size=world))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tp_plan= is deprecated for distributed_config=
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, tp_plan="auto")


def _one(path: str, a: argparse.Namespace, dtype: torch.dtype, front: str = "motensor") -> dict[str, Any]:
    import torch.distributed as dist

    import motensor

    t0 = time.perf_counter()
    try:
        model = _load(path, a, dtype, front)
    except motensor.MotensorError as e:
        # Every rank reaches the same verdict from the same plan: report it, no collective needed.
        print(f"motensor error: {e}", file=sys.stderr)
        return {"error": type(e).__name__, "message": str(e)}
    figures = _figures(model, t0)
    shards = model._motensor_shards
    figures["sliced_tensors"] = sorted(shards.slices)
    logits = None
    if not a.no_forward:
        with torch.inference_mode():
            ids = _tokens(model.config.get_text_config().vocab_size).to(model.device)
            logits = model(ids).logits.float().cpu().tolist()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, figures)
    del model
    return {"world": dist.get_world_size(), "ranks": gathered, "logits": logits,
            "replicated": sorted(shards.replicated)}


if __name__ == "__main__":
    sys.exit(main())
