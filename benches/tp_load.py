#!/usr/bin/env python
"""Tensor-parallel load benchmark: ``motensor.from_pretrained(..., tp_plan="auto")`` under
``torch.distributed.run`` at 1, 2 and 4 ranks on a synthetic Llama-shaped NVFP4 checkpoint.

Per rank count N (case ``<shape>-<format>``; impl ``motensor_tp<N>``): the load's wall time
(slowest rank, whole ``from_pretrained``: process group, plan, sliced read, model build), the
Rust fill's seconds, the checkpoint bytes each rank read (measured by the fill, the largest rank)
and the quantized bytes each rank holds. ``ideal_tp<N>`` = the 1-rank figure / N: time and bytes
fall as 1/N when the disk or page cache is not the bottleneck (only the quantized Linears are
split; embeddings, ``lm_head`` input side and norms are read by every rank).

    python benches/tp_load.py                         # GPU machine: 8b, NCCL, ranks 1 2 4 (as GPUs allow)
    python benches/tp_load.py --device cpu --shape 1b # CPU (gloo): the harness and the byte split

Writes ``benches/results/tp_load-<gpu|cpu>-<date>.json`` and the PNG beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import common  # noqa: E402  (benches/common.py)
import synthetic  # noqa: E402  (benches/synthetic.py)


def run_ranks(path: Path, n: int, device: str, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-port",
               str(29300 + n), "-m", "motensor.parallel.check", str(out), str(path), "--no-forward",
               "--device", device, "--dtype", "bfloat16"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"torchrun with {n} ranks failed:\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())[str(path)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(synthetic.SHAPES), default=None, help="default 8b on CUDA, 1b on the CPU")
    p.add_argument("--format", choices=sorted(synthetic.FORMATS), default="nvfp4")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cache-dir", type=Path, default=None, help="synthetic checkpoints (default benches/.cache)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS_DIR)
    p.add_argument("--timeout", type=int, default=900, help="seconds per torchrun")
    a = p.parse_args(argv)
    shape = a.shape or ("8b" if a.device == "cuda" else "1b")
    ranks = a.ranks
    if a.device == "cuda":
        ranks = [n for n in ranks if n <= torch.cuda.device_count()]
        if not ranks:
            p.error("no CUDA GPU")

    path = synthetic.ensure_checkpoint(shape, a.format, a.cache_dir)
    files = synthetic.shard_files(path)
    total = sum(f.stat().st_size for f in files)
    print(f"tp_load: {shape}-{a.format} ({total / 1e9:.2f} GB) on {a.device}, ranks {ranks}")
    case = f"{shape}-{a.format}"
    rows: list[dict] = []
    base: dict[str, float] = {}
    for n in ranks:
        common.warm_page_cache(files)  # every rank count starts from the same (warm) cache
        r = run_ranks(path, n, a.device, a.timeout)
        figs = r["ranks"]
        got = {
            "s": max(x["load_seconds"] for x in figs),
            "fill_s": max(x["fill_seconds"] for x in figs),
            "read_GB_per_rank": max(x["measured_read_bytes"] for x in figs) / 1e9,
            "held_GB_per_rank": max(x["held_bytes"] for x in figs) / 1e9,
        }
        for metric, v in got.items():
            rows.append({"case": case, "impl": f"motensor_tp{n}", "metric": metric, "value": round(v, 4)})
            if n == ranks[0]:
                base[metric] = v * ranks[0]
            elif base:
                rows.append({"case": case, "impl": f"ideal_tp{n}", "metric": metric, "value": round(base[metric] / n, 4)})
        print(f"  {n} rank(s): load {got['s']:.2f} s (fill {got['fill_s']:.2f} s), read {got['read_GB_per_rank']:.3f} GB "
              f"and hold {got['held_GB_per_rank']:.3f} GB of quantized tensors per rank")

    command = "python " + " ".join(shlex.quote(x) for x in [os.path.relpath(__file__, common.ROOT),
                                                            *(argv if argv is not None else sys.argv[1:])])
    out = common.write_results(
        "tp_load", rows, command, a.out_dir,
        note=(f"one torchrun per rank count, page cache warmed first; s = slowest rank's whole from_pretrained "
              f"(tp_plan='auto', {a.device}, no forward); read = bytes the Rust fill copied out of the files "
              f"(measured); held = QuantLinear tensor bytes; ideal = first rank count's figure scaled by 1/N. "
              f"{os.cpu_count()} CPUs shared by all ranks"),
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
