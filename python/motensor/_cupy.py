"""The optional CuPy import, probed once (no GPU work): shared by ``motensor.dispatch``, which
asks whether the CuPy kernels can run, and ``motensor.kernels.cupy_dequant``, which runs them.
It lives outside ``motensor.kernels`` so that the dispatcher imports no kernel module."""
from __future__ import annotations

import functools
from types import ModuleType
from typing import Optional


class CupyUnavailableError(RuntimeError):
    """CuPy (cupy-cuda12x / cupy-cuda13x, extras `motensor[cuda12]` / `[cuda13]`) cannot be imported."""


@functools.lru_cache(maxsize=1)
def import_cupy() -> tuple[Optional[ModuleType], Optional[BaseException]]:
    try:
        import cupy
    except Exception as e:   # ImportError, or a broken CUDA install raising at import
        return None, e
    return cupy, None


def is_available() -> bool:
    """True when CuPy imports (does not touch a GPU otherwise)."""
    return import_cupy()[0] is not None


def cupy() -> ModuleType:
    """The CuPy module, or :class:`CupyUnavailableError` with the install hint."""
    module, err = import_cupy()
    if module is None:
        raise CupyUnavailableError(
            "the CuPy dequant kernel needs CuPy: pip install 'motensor[cuda12]' (or [cuda13]); "
            f"import failed with: {err!r}")
    return module
