"""The format table, as read from the Rust core (one row per ModelOpt ``quant_algo``).

This is the same table the Rust validator, dequantizer and loader use; Python modules pick
their recipe (``motensor.recipes``) from it, and the tests iterate over it.

Every enum-valued field is one of the enums of ``motensor._vocab``, generated from the Rust
enums' stable names (``scripts/gen_stubs.py``; ``make test`` fails when they drift). Python code
compares enum members, never strings, so a name changed on the Rust side fails loudly (at
import, and in the drift check) instead of silently changing what a comparison means. The
kernels take the same enums (their ``.value`` becomes a ``tl.constexpr``); the ``torch.library``
ops, whose schemas allow only plain types, pass their ``.name``.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, TypeVar, Union

from motensor import _core
from motensor._vocab import (
    Activation,
    Element,
    GlobalScale,
    Packing,
    ScaleEncoding,
    ScaleLayout,
    ShapeRule,
    WeightLayout,
)

__all__ = [
    "Activation",
    "Element",
    "FORMAT_NAMES",
    "FormatSpec",
    "GlobalScale",
    "Packing",
    "ScaleEncoding",
    "ScaleLayout",
    "ShapeRule",
    "TensorRule",
    "WeightLayout",
    "all_formats",
    "as_enum",
    "get_format",
]

E = TypeVar("E", bound=Enum)


def as_enum(cls: type[E], value: Union[E, str], what: str = "") -> E:
    """``value`` as a member of ``cls``: a member is returned as is, a string is looked up by
    name (the form the ``motensor::`` ops carry). Raises ``ValueError`` naming the choices."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str) and value in cls.__members__:
        return cls[value]
    choices = ", ".join(cls.__members__)
    raise ValueError(f"{what or cls.__name__} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class TensorRule:
    """One tensor a format expects per module (``<module>.<role>``; roles are ModelOpt's
    tensor-name suffixes: ``weight``, ``weight_scale``, ``weight_scale_2``, ``input_scale``,
    ``pre_quant_scale``, ``bias``)."""

    role: str
    required: bool
    dtypes: tuple[str, ...]
    shape: ShapeRule
    encoding: ScaleEncoding


@dataclass(frozen=True)
class FormatSpec:
    """Everything motensor knows about one ``quant_algo`` (see ``shared/FORMATS.md``)."""

    name: str
    element: Element
    packing: Packing
    default_group: int | None
    activation: Activation
    global_scale: GlobalScale
    weight_layout: WeightLayout
    scale_layout: ScaleLayout
    group_divides_k: bool
    math: str
    tensors: tuple[TensorRule, ...]

    def rule(self, role: str) -> TensorRule | None:
        return next((r for r in self.tensors if r.role == role), None)

    @property
    def weight_only(self) -> bool:
        return self.activation is Activation.NONE

    @property
    def scale_encoding(self) -> ScaleEncoding:
        rule = self.rule("weight_scale")
        return rule.encoding if rule else ScaleEncoding.F32

    @property
    def scale_shape(self) -> ShapeRule:
        rule = self.rule("weight_scale")
        return rule.shape if rule else ShapeRule.SCALAR

    @property
    def static_input_scale(self) -> bool:
        """Whether the checkpoint must carry a calibrated ``input_scale``."""
        rule = self.rule("input_scale")
        return rule is not None and rule.required

    def __repr__(self) -> str:
        group = f", group={self.default_group}" if self.default_group else ""
        return (f"FormatSpec({self.name}: {self.element.name} weights, {self.scale_encoding.name} "
                f"{self.scale_shape.name} scales{group}, activations {self.activation.name})")


def _spec(row: dict[str, Any]) -> FormatSpec:
    rules = tuple(
        TensorRule(r["role"], r["required"], tuple(r["dtypes"]), ShapeRule[r["shape"]], ScaleEncoding[r["encoding"]])
        for r in row["tensors"]
    )
    return FormatSpec(
        name=row["name"],
        element=Element[row["element"]],
        packing=Packing[row["packing"]],
        default_group=row["default_group"],
        activation=Activation[row["activation"]],
        global_scale=GlobalScale[row["global_scale"]],
        weight_layout=WeightLayout[row["weight_layout"]],
        scale_layout=ScaleLayout[row["scale_layout"]],
        group_divides_k=row["group_divides_k"],
        math=row["math"],
        tensors=rules,
    )


@lru_cache(maxsize=None)
def all_formats() -> dict[str, FormatSpec]:
    """Every supported format, keyed by canonical (upper-case) ``quant_algo``."""
    return {row["name"]: _spec(row) for row in _core.format_table()}


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
