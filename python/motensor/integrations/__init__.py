"""motensor inside other libraries: transformers' quantizer plug-in (``hf_quantizer``).

``import motensor`` must stay cheap (inspecting a checkpoint needs no transformers, whose import
takes seconds), yet ``AutoModelForCausalLM.from_pretrained`` must find motensor's quantizer. So the
registration runs when transformers' quantizer table is imported: at once if it already is, else
from an import hook that fires right after ``transformers.quantizers.auto`` executes (which
``transformers.modeling_utils`` imports, so before any model loads).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys

log = logging.getLogger("motensor")

_TARGET = "transformers.quantizers.auto"


def _register_now() -> bool:
    partial = sys.modules.get("motensor.integrations.hf_quantizer")
    if partial is not None and not hasattr(partial, "register"):
        return True  # being imported right now (it imported transformers' table): it registers at its end
    try:
        from motensor.integrations.hf_quantizer import register

        register()
    except Exception as e:  # an incompatible transformers must not break `import motensor`
        log.warning("motensor could not register its transformers quantizer (%s: %s); "
                    "use motensor.from_pretrained", type(e).__name__, e)
        return False
    return True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of transformers' quantizer table so that
    motensor registers as soon as that module has executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_register(module):
            exec_module(module)
            _register_now()

        spec.loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def register_transformers() -> None:
    """Registers motensor as transformers' quantizer for ``quant_method: "modelopt"``: now if
    transformers' quantizer table is loaded, else as soon as it is (``import motensor`` calls this)."""
    if _TARGET in sys.modules:
        _register_now()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
