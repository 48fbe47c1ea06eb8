"""benches/lora.py on the CPU (``--smoke``): the result file of the LoRA training benchmark.

The figures that matter (8B shape, NVFP4 LoRA vs bf16 LoRA, tokens/s and peak GPU memory) come
from running ``benches/lora.py`` on a GPU; this checks the code path that writes them.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("peft")


def test_lora_bench_smoke_writes_results(tmp_path):
    spec = importlib.util.spec_from_file_location("motensor_bench_lora", ROOT / "benches" / "lora.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("lora-cpu-*.json")
    doc = json.loads(path.read_text())
    impls = {(r["impl"], r["metric"]) for r in doc["rows"]}
    assert impls == {("motensor_NVFP4_lora", "tok/s"), ("motensor_NVFP4_lora", "GiB"),
                     ("hf_fp32_lora", "tok/s"), ("hf_fp32_lora", "GiB")}
    assert all(r["value"] >= 0 for r in doc["rows"]) and all(r["value"] > 0 for r in doc["rows"] if r["metric"] == "tok/s")
