"""benches/validate_scales.py on the CPU (``--smoke``): the harness that measures what scale
validation costs a load (issue 8), on the tiny synthetic checkpoints. The figures themselves come
from running the script at the 1b shape (benches/results/validate_scales-cpu-*.json); this checks
the code path that writes them: both settings timed, interleaved, and the ratio rows consistent
with the timing rows."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


@pytest.fixture()
def bench():
    """benches/validate_scales.py, imported as the scripts import each other (benches/ on
    sys.path, siblings by plain names); both undone afterwards."""
    path = list(sys.path)
    sys.path.insert(0, str(BENCHES))
    spec = importlib.util.spec_from_file_location("validate_scales", BENCHES / "validate_scales.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.path[:] = path
    for name in ("common", "synthetic", "plot"):
        m = sys.modules.get(name)
        if m is not None and str(getattr(m, "__file__", "")).startswith(str(BENCHES)):
            del sys.modules[name]


def test_smoke_writes_interleaved_on_off_figures(bench, tmp_path):
    assert bench.main(["--smoke", "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "ck")]) == 0
    (path,) = (tmp_path / "out").glob("validate_scales-cpu-*.json")
    doc = json.loads(path.read_text())
    assert doc["bench"] == "validate_scales" and doc["smoke"] is True and doc["machine"]["gpu"] is None
    assert "--smoke" in doc["command"] and doc["threads"] >= 1
    cases = {r["case"] for r in doc["rows"]}
    assert cases == {"tiny-nvfp4-warm", "tiny-w4a16_awq-warm"}
    for case in cases:
        rows = {(r["impl"], r["metric"]): r for r in doc["rows"] if r["case"] == case}
        for impl in bench.SETTINGS:
            for p in ("", "fill_"):  # the whole load, the Rust fill alone
                runs = [float(x) for x in rows[(impl, f"{p}s_min")]["note"].split(": ")[1].split(", ")]
                assert len(runs) == 2 and rows[(impl, f"{p}s_min")]["value"] == pytest.approx(min(runs), rel=1e-5)
                assert rows[(impl, f"{p}s_median")]["value"] >= rows[(impl, f"{p}s_min")]["value"] > 0
                assert rows[(impl, f"{p}cpu_s_min")]["value"] >= 0
            assert rows[(impl, "GB/s")]["value"] > 0 and rows[(impl, "open_ms_min")]["value"] > 0
        for p in ("", "fill_"):
            on, off = rows[("motensor_validate", f"{p}s_min")]["value"], rows[("motensor_no_validate", f"{p}s_min")]["value"]
            assert rows[("validate_over_no_validate", f"{p}ratio_min")]["value"] == pytest.approx(on / off, rel=1e-3)


def test_interleaving_alternates_the_order(bench):
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}
    times = bench._interleaved(fns, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then ABBA...
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(len(t) == 2 and t[0] >= 0 and t[1] >= 0 for v in times.values() for t in v)  # (wall, cpu)
