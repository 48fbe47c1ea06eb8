"""The format table's vocabulary is one typed model from Rust to every Python layer.

The enums of ``motensor._vocab`` are generated from the Rust enums' stable names
(``scripts/gen_stubs.py``, checked for drift by ``make test``); every table row resolves to
exactly one recipe; the kernels' constexpr ids are the enums' values.
"""
import torch

import motensor
from motensor import _core, _vocab, recipes
from motensor.formats import Element, ScaleEncoding, all_formats, as_enum


def test_generated_enums_match_the_built_extension():
    for enum_name, names in _core.vocabulary().items():
        enum = getattr(_vocab, enum_name)
        assert [m.name for m in enum] == names
        assert [m.value for m in enum] == list(range(len(names)))


def test_table_fields_are_enum_members():
    for spec in all_formats().values():
        for field in ("element", "packing", "activation", "global_scale", "weight_layout", "scale_layout"):
            value = getattr(spec, field)
            assert isinstance(value, getattr(_vocab, type(value).__name__)), (spec.name, field)
        for rule in spec.tensors:
            assert isinstance(rule.shape, _vocab.ShapeRule) and isinstance(rule.encoding, _vocab.ScaleEncoding)


def test_every_format_has_one_recipe_and_every_recipe_a_format():
    used = {recipes.recipe_for(spec).key for spec in all_formats().values()}
    assert used == {r.key for r in recipes.RECIPES}, "a recipe no table row uses"


def test_a_row_without_recipe_is_refused_by_name():
    spec = all_formats()["NVFP4"]
    import dataclasses

    odd = dataclasses.replace(spec, name="X", activation=_vocab.Activation.MXFP8)
    try:
        recipes.recipe_for(odd)
    except motensor.errors.UnsupportedFormatError as e:
        assert "X" in str(e) and "MXFP8" in str(e)
    else:
        raise AssertionError("no error")


def test_names_parse_and_bad_names_raise():
    assert as_enum(Element, "E2M1") is Element.E2M1
    assert as_enum(ScaleEncoding, ScaleEncoding.E8M0) is ScaleEncoding.E8M0
    try:
        as_enum(Element, "e2m1")  # the vocabulary is case-exact: one spelling everywhere
    except ValueError as e:
        assert "E2M1" in str(e)
    else:
        raise AssertionError("no error")


def test_kernel_constexprs_are_the_enum_values():
    from motensor.kernels import _decode, cupy_dequant

    assert _decode.ELEM_E2M1.value == Element.E2M1.value and _decode.ELEM_INT4.value == Element.INT4.value
    assert _decode.SCALE_E4M3.value == ScaleEncoding.E4M3.value
    assert _decode.SCALE_E8M0.value == ScaleEncoding.E8M0.value
    assert _decode.SCALE_F32.value == ScaleEncoding.F32.value
    d = cupy_dequant.defines(Element.INT4, ScaleEncoding.F32, torch.bfloat16, has_gs=False)
    assert f"#define ELEMENT {Element.INT4.value}\n" in d and f"#define SCALE_KIND {ScaleEncoding.F32.value}\n" in d


def test_dispatch_imports_no_kernel_module():
    import subprocess
    import sys

    code = ("import sys, motensor.dispatch; "
            "print([m for m in sys.modules if m.startswith('motensor.kernels')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
