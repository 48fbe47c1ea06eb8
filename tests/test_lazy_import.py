"""``import motensor`` and ``motensor inspect`` do not import torch (issue 15)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parent / "data" / "demo"


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_import_motensor_does_not_import_torch():
    out = _run("import sys, motensor; ck = motensor.open(%r); ck.summary(); print('torch' in sys.modules)" % str(DEMO))
    assert out.strip().splitlines()[-1] == "False"


def test_inspect_does_not_import_torch():
    out = _run("import sys\nfrom motensor import cli\ncli.main(['inspect', %r])\nprint('torch' in sys.modules)" % str(DEMO))
    assert "NVFP4" in out and out.strip().splitlines()[-1] == "False"


def test_torch_objects_still_work():
    out = _run("import motensor; ck = motensor.open(%r); m = next(iter(ck.modules));"
               "print(ck.dequantize(m).dtype)" % str(DEMO))
    assert out.strip() == "torch.float32"
