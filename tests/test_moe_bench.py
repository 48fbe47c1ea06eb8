"""benches/moe.py on the CPU (``--smoke``): the result file of the routed-experts benchmark.

The figures that matter (Qwen3-30B-A3B and DeepSeek-V3 layer shapes on a GPU: the grouped Triton
kernel vs the expert loop vs transformers' bf16 experts) come from running ``benches/moe.py`` on a
GPU (``scripts/gpu_check.py`` step ``moe``); this checks the code path that writes them. On a CPU
the grouped op runs its loop reference, so grouped and loop agree.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_moe_bench_smoke_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("motensor_bench_moe", ROOT / "benches" / "moe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("moe-cpu-*.json")
    doc = json.loads(path.read_text())
    assert doc["bench"] == "moe" and doc["machine"]["gpu"] is None
    rows = {(r["case"], r["impl"], r["metric"]): r["value"] for r in doc["rows"]}
    cases = {"tiny-E8-b1", "tiny-E8-b64"}
    assert {c for c, _, _ in rows} == cases
    for case in cases:
        bf16 = rows[(case, "hf_bf16_experts", "us")]
        assert bf16 > 0
        for algo in mod.QUICK_FORMATS:
            g, loop = rows[(case, f"motensor_{algo}_grouped", "us")], rows[(case, f"motensor_{algo}_loop", "us")]
            assert g > 0 and loop > 0
            # Ratios are the same run's times, peer / grouped.
            assert abs(rows[(case, f"motensor_{algo}_grouped", "grouped_vs_loop")] - loop / g) <= 1e-9 * loop / g
            assert abs(rows[(case, f"motensor_{algo}_grouped", "grouped_vs_bf16")] - bf16 / g) <= 1e-9 * bf16 / g
            # The grouped op's CPU implementation is the loop reference: the same output.
            assert rows[(case, f"motensor_{algo}_grouped", "rel_diff_vs_loop")] <= 2.0 ** -8
    assert "grouped_unavailable" not in doc
