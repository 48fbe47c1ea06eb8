"""The format table, as read from the Rust core (one row per ModelOpt ``quant_algo``).

This is the same table the Rust validator, dequantizer and loader use; Python modules pick
their kernels and activation quantization from it, and the tests iterate over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from motensor import _core


@dataclass(frozen=True)
class TensorRule:
    """One tensor a format expects per module (``<module>.<role>``)."""

    role: str
    required: bool
    dtypes: tuple[str, ...]
    shape: str
    encoding: str


@dataclass(frozen=True)
class FormatSpec:
    """Everything motensor knows about one ``quant_algo`` (see ``shared/FORMATS.md``)."""

    name: str
    element: str  # e4m3 | e2m1 | int4 | int8
    packing: str  # none | pairs_along_k | pairs_along_n
    default_group: int | None
    activation: str  # none | fp8_per_tensor | fp8_per_token | nvfp4 | mxfp8 | mxfp4 | int8_per_tensor
    global_scale: str  # none | multiplies | fp8_requant
    weight_layout: str  # as_stored | int4_to_k_packed
    scale_layout: str  # as_stored | groups_transposed | blocks2d_squeezed
    group_divides_k: bool
    math: str
    tensors: tuple[TensorRule, ...]

    def rule(self, role: str) -> TensorRule | None:
        return next((r for r in self.tensors if r.role == role), None)

    @property
    def weight_only(self) -> bool:
        return self.activation == "none"

    @property
    def scale_encoding(self) -> str:
        rule = self.rule("weight_scale")
        return rule.encoding if rule else "float"

    @property
    def scale_shape(self) -> str:
        rule = self.rule("weight_scale")
        return rule.shape if rule else "scalar"


@lru_cache(maxsize=None)
def all_formats() -> dict[str, FormatSpec]:
    """Every supported format, keyed by canonical (upper-case) ``quant_algo``."""
    out = {}
    for row in _core.format_table():
        rules = tuple(
            TensorRule(r["role"], r["required"], tuple(r["dtypes"]), r["shape"], r["encoding"])
            for r in row.pop("tensors")
        )
        out[row["name"]] = FormatSpec(tensors=rules, **row)
    return out


def get_format(quant_algo: str) -> FormatSpec:
    """The spec of ``quant_algo`` (case-insensitive)."""
    key = quant_algo.strip().upper()
    try:
        return all_formats()[key]
    except KeyError:
        from motensor.errors import UnsupportedFormatError

        refused = dict(_core.unsupported_formats())
        why = refused.get(key, "unknown quant_algo")
        raise UnsupportedFormatError(f"quant_algo {quant_algo!r} is not supported: {why}") from None


FORMAT_NAMES: tuple[str, ...] = tuple(all_formats())
