#!/usr/bin/env python
"""CPU GEMM benchmark (issue 15): ``QuantLinear`` forwards on the CPU (the fused Rust kernels,
motensor/kernels/cpu.py) against ``nn.Linear`` in bf16, same input, same run.

    python benches/cpu_gemm.py                         # 4096x4096 M=1,8,64; 14336x4096 M=1,8
    python benches/cpu_gemm.py --shapes 4096x4096 --m 1 --formats NVFP4

Writes ``benches/results/cpu_gemm-cpu-<date>.json`` + PNG (metric ``ms``, case ``<M>x<N>x<K>``,
impls ``motensor_<quant_algo>``, ``torch_bf16_linear`` and ``motensor_<quant_algo>_reference``
(the pure-torch reference, ``MOTENSOR_CPU_KERNELS=reference``, M = 1 only). Each row's note
carries the ratio to ``torch_bf16_linear``. Times are the minimum of ``--repeat`` calls, wall
clock (``--clock wall``, the default: what a caller waits) or process CPU time (``--clock cpu``,
all threads: less sensitive to neighbours on a shared box, but it charges a kernel that runs on
every core for each core, where torch's small GEMVs may run on one). Goal (issue 15): <= 0.5x bf16 at M = 1, <= 1.2x at M = 64.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import RESULTS_DIR, write_results  # noqa: E402


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def cpu_ms(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best * 1e3


def _core_isa() -> str:
    from motensor import dispatch

    return dispatch.cpu_isa()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="4096x4096,14336x4096", help="NxK list")
    p.add_argument("--m", default="1,8,64")
    p.add_argument("--max-m-large", type=int, default=8, help="largest M for shapes over 4096x4096")
    p.add_argument("--formats", default="NVFP4,W4A16_AWQ,FP8")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    a = p.parse_args(argv)
    global clock
    clock = CLOCK[a.clock]

    from motensor.kernels import cpu
    from motensor.nn import QuantLinear

    torch.manual_seed(0)
    rows = []
    for shape in a.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        mods = {f: QuantLinear.from_float(lin, f, input_amax=4.0) for f in a.formats.split(",")}
        for m in (int(v) for v in a.m.split(",")):
            if n * k > 4096 * 4096 and m > a.max_m_large:
                continue
            x = torch.randn(m, k, dtype=torch.bfloat16)
            case = f"{m}x{n}x{k}"
            with torch.inference_mode():
                base = cpu_ms(lambda lin=lin, x=x: lin(x), a.repeat)
                rows.append({"case": case, "impl": "torch_bf16_linear", "metric": "ms", "value": round(base, 3)})
                for f, mod in mods.items():
                    t = cpu_ms(lambda mod=mod, x=x: mod(x), a.repeat)
                    rows.append({"case": case, "impl": f"motensor_{f}", "metric": "ms", "value": round(t, 3),
                                 "note": f"{t / base:.2f}x bf16; {mod.kernel_choice(m, torch.bfloat16).name}"})
                    if m == 1:
                        os.environ["MOTENSOR_CPU_KERNELS"] = "reference"
                        try:
                            tr = cpu_ms(lambda mod=mod, x=x: mod(x), 1)
                        finally:
                            del os.environ["MOTENSOR_CPU_KERNELS"]
                        rows.append({"case": case, "impl": f"motensor_{f}_reference", "metric": "ms",
                                     "value": round(tr, 3), "note": f"{tr / base:.2f}x bf16"})
                    print(case, f, f"{t:.2f} ms = {t / base:.2f}x bf16 ({base:.2f} ms)", flush=True)
    path = write_results("cpu_gemm", rows, "python benches/cpu_gemm.py " + " ".join(argv or sys.argv[1:]),
                         a.out, isa=cpu.isa(), threads=torch.get_num_threads(),
                         note=f"{'wall-clock' if a.clock == 'wall' else 'process CPU'} time per call, min of {a.repeat}; "
                              f"CPU kernels {_core_isa()}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
