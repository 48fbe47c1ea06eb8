"""torch.compile numerics of motensor models: make inductor round where eager rounds.

Measured on the CPU in bf16 (tests/test_compile_numerics.py): motensor's custom ops compute the
same under ``torch.compile`` as in eager (``aot_eager``: bit-identical logits; their fake
implementations keep every dtype). The difference comes from inductor's fusion *around* them:
inside a fused kernel (RMSNorm, residual add, SiLU * up) inductor keeps fp32 where eager rounds
to bf16 after each op (``hidden.to(bf16)`` then ``* weight`` in bf16), so the bf16 tensor that
reaches a quantized Linear can differ from eager's by one bf16 ulp. A plain bf16 model shrugs
that off (logits move by ~0.125-0.25), but an activation quantizer (NVFP4 W4A4, FP8, INT8,
MXFP8/MXFP4) turns a one-ulp change into a different E2M1/E4M3/INT8 code, a step of up to a third
of the value: llama-nvfp4 logits moved by 4.0 under inductor, and by 0.0 with inductor's
``emulate_precision_casts`` on, which keeps eager's intermediate roundings.

:func:`match_eager_casts` turns that switch on; ``QuantLinear`` calls it when its format quantizes
activations. It is a process-wide inductor setting (``torch._inductor.config`` or, before that
module is imported, the ``TORCHINDUCTOR_EMULATE_PRECISION_CASTS`` environment variable that
seeds it); it costs a few extra convert instructions in fused kernels. An explicit choice wins:
with ``TORCHINDUCTOR_EMULATE_PRECISION_CASTS`` set in the environment beforehand, motensor
leaves it alone.
"""
from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("motensor.compile")

ENV = "TORCHINDUCTOR_EMULATE_PRECISION_CASTS"
_USER_CHOICE = os.environ.get(ENV)  # read at import: what the user set, before motensor touched it
_done = False


def match_eager_casts() -> None:
    """Makes inductor keep eager's bf16/fp16 intermediate roundings (idempotent, cheap)."""
    global _done
    if _done or _USER_CHOICE is not None:
        return
    _done = True
    cfg = sys.modules.get("torch._inductor.config")
    if cfg is not None:
        setattr(cfg, "emulate_precision_casts", True)  # noqa: B010 - a module attribute mypy cannot see
    else:  # importing inductor's config costs seconds; its default is read from this variable
        os.environ[ENV] = "1"
    log.info("motensor: activation-quantized layers present; torch.compile (inductor) set to emulate eager "
             "precision casts so quantizer inputs round as in eager (%s=0 beforehand to opt out)", ENV)
