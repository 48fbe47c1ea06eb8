"""Bad input raises a clear motensor exception naming the file (and tensor / module):
never a panic (``PanicException``), a segfault, a SIGBUS, or silently wrong numbers.

One test per bad-input class. Each asserts the exception class (``motensor.errors``), that the
message names the file (and tensor/module where there is one) and the ``.file`` / ``.tensor`` /
``.module`` attributes. Checkpoints come from ``tests/helpers`` (raw safetensors writer and
synthetic checkpoints in exact ModelOpt layout for every format).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import motensor
from motensor.errors import (
    ArgumentError,
    ConfigError,
    FormatError,
    HeaderError,
    MotensorError,
    ShardError,
    UnsupportedFormatError,
)
from helpers import modelopt_layout as mol
from helpers import st

DOWN = mol.DOWN
SHARD = "model.safetensors"


def _is_panic(e: BaseException) -> bool:
    return type(e).__name__ == "PanicException"


def expect(exc: type[MotensorError], fn, *, file: str | None, tensor: str | None = None,
           module: str | None = None) -> MotensorError:
    """Runs ``fn`` and checks it raises ``exc`` (exactly that class or a subclass) with the
    file named in the message and in ``.file``, and likewise tensor and module."""
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - a PanicException is a BaseException
        assert not _is_panic(e), f"Rust panic reached Python: {e!r}"
        assert isinstance(e, exc), f"expected {exc.__name__}, got {type(e).__name__}: {e}"
        msg = str(e)
        if file is not None:
            assert e.file is not None, f"no .file on {e!r}"
            assert Path(e.file).name == file, f".file is {e.file!r}, expected …/{file}: {msg}"
            assert e.file in msg, f"message does not name the file: {msg}"
        if tensor is not None:
            assert e.tensor == tensor, f".tensor is {e.tensor!r}, expected {tensor!r}: {msg}"
            assert tensor in msg, msg
        if module is not None:
            assert e.module == module, f".module is {e.module!r}, expected {module!r}: {msg}"
            assert module in msg, msg
        return e
    raise AssertionError(f"no {exc.__name__} raised")


def open_dir(d: Path):
    return lambda: motensor.open(d)


def one_tensor(dtype="F32", shape=(4,), offsets=(0, 16)) -> dict:
    return {"w": st.entry(dtype, shape, *offsets)}


# ---------------------------------------------------------------------------------------------
# safetensors headers


def test_every_synthetic_format_is_a_valid_baseline(tmp_path):
    """The helper checkpoints open cleanly (and read the same through the reference
    safetensors reader), so each break below is the only thing wrong."""
    from safetensors import safe_open

    for algo in mol.ALL_FORMATS:
        d = mol.ModelOptCheckpoint.build(algo).write(tmp_path / algo, shards=2)
        ck = motensor.open(d)
        assert set(ck.modules) == set(mol.LINEARS), algo
        assert ck.modules[DOWN].quant_algo == algo
        assert "lm_head.weight" in ck.plain_tensors
        with safe_open(ck.shards[0], "pt") as f:
            for k in f.keys():
                assert torch.equal(f.get_tensor(k).reshape(-1).view(torch.uint8), ck.tensor(k).reshape(-1).view(torch.uint8)), k
    ck = motensor.open(mol.ModelOptCheckpoint.mixed({DOWN: "NVFP4", f"{mol.PREFIX}.self_attn.q_proj": "FP8"}).write(tmp_path / "mixed"))
    assert {m.quant_algo for m in ck.modules.values()} == {"NVFP4", "FP8"}


@pytest.mark.parametrize("size", [0, 1, 7])
def test_truncated_inside_the_length_prefix(tmp_path, size):
    p = tmp_path / SHARD
    p.write_bytes(b"\x10" * size)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD)
    assert "8-byte length prefix" in str(e)


def test_truncated_inside_the_header(tmp_path):
    b = st.raw_bytes(one_tensor(), b"\0" * 16)
    (tmp_path / SHARD).write_bytes(b[:20])
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD)
    assert "larger than the" in str(e)


def test_truncated_inside_the_data(tmp_path):
    p = mol.write_checkpoint(tmp_path, "NVFP4")
    shard = p / SHARD
    shard.write_bytes(shard.read_bytes()[:-5])
    header, _ = st.read_header(shard)
    header.pop("__metadata__", None)
    last = max(header, key=lambda name: header[name]["data_offsets"][1])
    e = expect(HeaderError, open_dir(p), file=SHARD, tensor=last)
    assert "past the end" in str(e)


@pytest.mark.parametrize("prefix", [10**6, 2**63, 2**64 - 1])
def test_header_length_larger_than_the_file(tmp_path, prefix):
    st.write_raw(tmp_path / SHARD, one_tensor(), b"\0" * 16, prefix=prefix)
    expect(HeaderError, open_dir(tmp_path), file=SHARD)


def test_header_length_shrunk_into_padding_is_not_a_silent_shift(tmp_path):
    # The JSON still parses with 3 padding spaces cut off, but the data region would start
    # 3 bytes early and every tensor would read shifted bytes.
    text = st.header_text(one_tensor("U8", (4,), (0, 4)), pad=False) + b"     "
    st.write_raw(tmp_path / SHARD, text, b"\1\2\3\4", prefix=len(text) - 3)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD)
    assert "no tensor" in str(e)


@pytest.mark.parametrize("offsets", [(0, 20), (16, 32), (2**64 - 1, 2**64 - 1)])
def test_offsets_past_the_end(tmp_path, offsets):
    st.write_raw(tmp_path / SHARD, one_tensor("U8", (offsets[1] - offsets[0],), offsets), b"\0" * 16)
    expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="w")


def test_overlapping_offsets(tmp_path):
    h = {"a": st.entry("U8", (4,), 0, 4), "b": st.entry("U8", (4,), 2, 6)}
    st.write_raw(tmp_path / SHARD, h, b"\0" * 6)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="b")
    assert "overlap" in str(e) and "'a'" in str(e)


def test_gap_and_trailing_bytes(tmp_path):
    h = {"a": st.entry("U8", (2,), 0, 2), "b": st.entry("U8", (2,), 4, 6)}
    st.write_raw(tmp_path / SHARD, h, b"\0" * 6)
    expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="b")
    st.write_raw(tmp_path / SHARD, {"a": st.entry("U8", (2,), 0, 2)}, b"\0" * 3)
    expect(HeaderError, open_dir(tmp_path), file=SHARD)


@pytest.mark.parametrize(
    "dtype,shape,offsets",
    [("F32", (3,), (0, 16)), ("F32", (2, 3), (0, 16)), ("BF16", (4,), (0, 16)), ("U8", (), (0, 16)), ("U8", (0,), (0, 16))],
)
def test_shape_and_byte_span_disagree(tmp_path, dtype, shape, offsets):
    st.write_raw(tmp_path / SHARD, one_tensor(dtype, shape, offsets), b"\0" * 16)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="w")
    assert "needs" in str(e)


@pytest.mark.parametrize("shape", [[-1, 4], [1.5], ["4"], [2**64], [2**32, 2**32], [0, 2**63], [2**40, 0, 2**40], [1] * 17])
def test_bad_or_unrepresentable_shape(tmp_path, shape):
    st.write_raw(tmp_path / SHARD, {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="w")


@pytest.mark.parametrize("dtype", ["F4", "f32", "float32", "", 4, None, ["F32"]])
def test_bad_dtype(tmp_path, dtype):
    st.write_raw(tmp_path / SHARD, {"w": {"dtype": dtype, "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="w")
    assert "dtype" in str(e)


@pytest.mark.parametrize(
    "text",
    [b"{", b'{"w":', b"{'w': 1}", b"[1, 2]", b"null", b"{}}", b'{"w":{}}\0', b"  ", b"{" + b"[" * 100000],
)
def test_invalid_json(tmp_path, text):
    st.write_raw(tmp_path / SHARD, text)
    expect(HeaderError, open_dir(tmp_path), file=SHARD)


def test_non_utf8_header(tmp_path):
    text = st.header_text(one_tensor())
    st.write_raw(tmp_path / SHARD, text[:3] + b"\xff" + text[3:], b"\0" * 16)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD)
    assert "UTF-8" in str(e)


def test_duplicate_tensor_names(tmp_path):
    pairs = [("w", st.entry("U8", (2,), 0, 2)), ("w", st.entry("U8", (2,), 2, 4))]
    st.write_raw(tmp_path / SHARD, pairs, b"\0" * 4)
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD, tensor="w")
    assert "twice" in str(e)


def test_metadata_not_a_string_map(tmp_path):
    st.write_raw(tmp_path / SHARD, {"__metadata__": {"format": 1}})
    e = expect(HeaderError, open_dir(tmp_path), file=SHARD)
    assert "__metadata__" in str(e)


# ---------------------------------------------------------------------------------------------
# shards and the index

INDEX = "model.safetensors.index.json"


def _sharded(tmp_path) -> Path:
    return mol.ModelOptCheckpoint.build("FP8").write(tmp_path / "ck", shards=2)


def _edit_index(d: Path, fn) -> None:
    idx = json.loads((d / INDEX).read_text())
    fn(idx["weight_map"])
    (d / INDEX).write_text(json.dumps(idx))


def test_missing_shard_named_in_the_index(tmp_path):
    d = _sharded(tmp_path)
    os.remove(d / "model-00002-of-00002.safetensors")
    e = expect(ShardError, open_dir(d), file="model-00002-of-00002.safetensors")
    assert "missing" in str(e)


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "", ".."])
def test_index_path_escaping_the_directory(tmp_path, bad):
    d = _sharded(tmp_path)
    mol.ModelOptCheckpoint.build("FP8").write(tmp_path)  # a real file outside: only the check can refuse it
    os.rename(tmp_path / SHARD, tmp_path / "outside.safetensors")
    _edit_index(d, lambda wm: wm.update({next(iter(wm)): bad}))
    e = expect(ConfigError, open_dir(d), file=INDEX)
    assert "not a file name inside the checkpoint directory" in str(e)


def test_index_places_a_tensor_in_the_wrong_shard(tmp_path):
    d = _sharded(tmp_path)
    first = "model-00001-of-00002.safetensors"
    name = next(n for n, f in json.loads((d / INDEX).read_text())["weight_map"].items() if f == first)
    _edit_index(d, lambda wm: wm.update({name: "model-00002-of-00002.safetensors"}))
    e = expect(ShardError, open_dir(d), file=first)
    assert name in str(e)


def test_invalid_index_json(tmp_path):
    d = _sharded(tmp_path)
    (d / INDEX).write_bytes(b'{"weight_map": [}')
    expect(ConfigError, open_dir(d), file=INDEX)


# ---------------------------------------------------------------------------------------------
# quantization metadata

QCFG = "hf_quant_config.json"


def _edit_hf(ck: mol.ModelOptCheckpoint, **quantization) -> None:
    ck.hf_quant_config["quantization"].update(quantization)


def test_unknown_quant_algo(tmp_path):
    d = mol.write_checkpoint(tmp_path, "NVFP4", lambda ck: _edit_hf(ck, quant_algo="NVFP5"))
    e = expect(UnsupportedFormatError, open_dir(d), file=QCFG)
    assert isinstance(e, FormatError)
    assert "NVFP5" in str(e) and "NVFP4" in str(e)


def test_unknown_quant_algo_in_config_json(tmp_path):
    d = mol.write_checkpoint(tmp_path, "FP8", lambda ck: ck.config["quantization_config"].update(quant_algo="INT3"),
                             hf_quant=False)
    expect(UnsupportedFormatError, open_dir(d), file="config.json")


def test_refused_quant_algo(tmp_path):
    d = mol.write_checkpoint(tmp_path, "FP8", lambda ck: _edit_hf(ck, quant_algo="fp8_pb_real"))
    e = expect(UnsupportedFormatError, open_dir(d), file=QCFG)
    assert "unconfirmed" in str(e)


def test_mixed_precision_layer_with_unknown_algo(tmp_path):
    ck = mol.ModelOptCheckpoint.mixed({DOWN: "NVFP4"})
    ck.hf_quant_config["quantization"]["quantized_layers"][DOWN]["quant_algo"] = "NVFP7"
    e = expect(UnsupportedFormatError, open_dir(ck.write(tmp_path)), file=QCFG)
    assert "NVFP7" in str(e)


def test_mixed_precision_layer_nested_or_malformed(tmp_path):
    for i, layer in enumerate([{"quant_algo": "MIXED_PRECISION"}, "FP8", {}]):
        ck = mol.ModelOptCheckpoint.mixed({DOWN: "FP8"})
        ck.hf_quant_config["quantization"]["quantized_layers"][DOWN] = layer
        expect(ConfigError, open_dir(ck.write(tmp_path / str(i))), file=QCFG)


def test_quant_method_not_modelopt(tmp_path):
    def edit(ck):
        ck.config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}

    d = mol.write_checkpoint(tmp_path, "FP8", edit, hf_quant=False)
    e = expect(ConfigError, open_dir(d), file="config.json")
    assert "awq" in str(e) and "modelopt" in str(e)


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"quantization": 1}', b'{"quantization": {}}', b"\xff\xfe{}",
                                  b'{"quantization": {"quant_algo": "NVFP4", "group_size": 0}}'])
def test_malformed_hf_quant_config(tmp_path, body):
    d = mol.write_checkpoint(tmp_path, "NVFP4")
    (d / QCFG).write_bytes(body)
    expect(ConfigError, open_dir(d), file=QCFG)


# ---------------------------------------------------------------------------------------------
# the module view against the format table


@pytest.mark.parametrize("algo", mol.ALL_FORMATS)
def test_missing_scale_tensor(tmp_path, algo):
    for role in [r for r in mol.required_roles(algo) if r != "weight"]:
        name = f"{DOWN}.{role}"
        d = mol.write_checkpoint(tmp_path / role, algo, lambda ck, name=name: ck.tensors.pop(name))
        e = expect(FormatError, open_dir(d), file=SHARD, tensor=name, module=DOWN)
        assert "missing" in str(e) and algo in str(e)


@pytest.mark.parametrize("algo", mol.ALL_FORMATS)
def test_wrong_scale_shape(tmp_path, algo):
    name = f"{DOWN}.weight_scale"
    good = mol.ModelOptCheckpoint.build(algo).tensors[name].shape
    bad = (*good, 2) if good else (2,)
    d = mol.write_checkpoint(tmp_path, algo, lambda ck: ck.set(name, shape=bad))
    e = expect(FormatError, open_dir(d), file=SHARD, tensor=name, module=DOWN)
    assert "shape" in str(e) or "group" in str(e)


@pytest.mark.parametrize("algo", mol.ALL_FORMATS)
def test_wrong_scale_dtype(tmp_path, algo):
    name = f"{DOWN}.weight_scale"
    good = mol.ModelOptCheckpoint.build(algo).tensors[name].dtype
    bad = "I32" if good != "I32" else "F32"
    d = mol.write_checkpoint(tmp_path, algo, lambda ck: ck.set(name, dtype=bad))
    e = expect(FormatError, open_dir(d), file=SHARD, tensor=name, module=DOWN)
    assert "dtype" in str(e) and bad in str(e)


@pytest.mark.parametrize("algo", mol.ALL_FORMATS)
def test_wrong_weight_dtype(tmp_path, algo):
    name = f"{DOWN}.weight"
    d = mol.write_checkpoint(tmp_path, algo, lambda ck: ck.set(name, dtype="BF16"))
    expect(FormatError, open_dir(d), file=SHARD, tensor=name, module=DOWN)


@pytest.mark.parametrize("algo", [a for a in mol.ALL_FORMATS if a in mol.GROUP])
def test_wrong_group_size(tmp_path, algo):
    g = mol.GROUP[algo]

    def edit(ck):
        _edit_hf(ck, group_size=g * 2)

    d = mol.write_checkpoint(tmp_path, algo, edit)
    # Every quantized module disagrees; the first in name order is reported.
    first = sorted(mol.LINEARS)[0]
    expect(FormatError, open_dir(d), file=SHARD, tensor=f"{first}.weight_scale", module=first)


def test_quantized_tensors_in_an_excluded_module(tmp_path):
    d = mol.write_checkpoint(tmp_path, "NVFP4", lambda ck: _edit_hf(ck, exclude_modules=["lm_head", "*down_proj"]))
    e = expect(FormatError, open_dir(d), file=SHARD, tensor=f"{DOWN}.weight", module=DOWN)
    assert "exclude" in str(e)


def test_quantized_tensors_without_any_quant_config(tmp_path):
    def edit(ck):
        del ck.config["quantization_config"]

    d = mol.write_checkpoint(tmp_path, "FP8", edit, hf_quant=False)
    first = sorted(mol.LINEARS)[0]
    expect(FormatError, open_dir(d), file=SHARD, tensor=f"{first}.weight", module=first)


def test_weight_with_an_empty_expert_dim(tmp_path):
    # No bytes stored, every scale shape consistent, but a logical K of 2^63: dequantizing it
    # used to overflow into a Rust panic.
    w, s = f"{DOWN}.weight", f"{DOWN}.weight_scale"

    def edit(ck):
        ck.set(w, shape=(0, 1, 2**62))
        ck.set(s, shape=(0, 1, 2**59))

    d = mol.write_checkpoint(tmp_path, "NVFP4", edit)
    expect(FormatError, open_dir(d), file=SHARD, tensor=w, module=DOWN)


def test_non_ascii_module_names_with_exclude_patterns(tmp_path):
    # Byte-wise matching of exclude patterns once split a UTF-8 character and panicked.
    ck = mol.ModelOptCheckpoint.build("FP8", linears={"aé.proj": (32, 128)}, exclude=("é",))
    m = motensor.open(ck.write(tmp_path))
    assert "aé.proj" in m.modules


def test_non_utf8_config_is_a_config_error(tmp_path):
    d = mol.write_checkpoint(tmp_path, "NVFP4", hf_quant=False)
    (d / "config.json").write_bytes(b'{"quantization_config": "\xc0\xaf"}')
    expect(ConfigError, open_dir(d), file="config.json")


def test_broken_config_json_beside_hf_quant_config(tmp_path):
    # hf_quant_config.json is the record, so open() never parses config.json; reading the
    # architecture later must still fail as a ConfigError naming the file.
    d = mol.write_checkpoint(tmp_path, "FP8")
    for body in (b"{", b"\xff\xfe"):
        (d / "config.json").write_bytes(body)
        ck = motensor.open(d)
        expect(ConfigError, lambda ck=ck: ck.config, file="config.json")


def test_unknown_module_is_an_argument_error(tmp_path):
    ck = motensor.open(mol.write_checkpoint(tmp_path, "FP8"))
    e = expect(ArgumentError, lambda: ck.dequantize("model.nope"), file=None, module="model.nope")
    assert e.file is None and e.tensor is None


# ---------------------------------------------------------------------------------------------
# files that change after they were opened


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def test_truncated_after_open_raises_shard_error(tmp_path):
    d = mol.write_checkpoint(tmp_path, "W4A16_AWQ")
    ck = motensor.open(d)
    plan = ck._core.plan()
    arena = torch.empty(plan.total_bytes, dtype=torch.uint8)
    plan.fill_all(arena)  # fine before
    shard = d / SHARD
    full = shard.stat().st_size
    _truncate(shard, full // 2)

    w = f"{DOWN}.weight"
    expect(ShardError, lambda: ck.tensor(w), file=SHARD, tensor=w)
    e = expect(ShardError, lambda: ck.dequantize(DOWN), file=SHARD)
    assert e.tensor is not None and e.tensor.startswith(DOWN)
    assert "truncated" in str(e)
    expect(ShardError, lambda: plan.fill_all(arena), file=SHARD)
    batches = plan.batches(1 << 16)
    errors = 0
    for i in range(len(batches)):
        try:
            batches.fill(i, torch.empty(1 << 16, dtype=torch.uint8))
        except ShardError as err:
            assert Path(err.file).name == SHARD and err.tensor
            errors += 1
    assert errors > 0
    # Tensors before the cut still read their exact bytes.
    first = min(ck.tensor_names(), key=lambda n: ck.tensor_info(n).offset)
    assert ck.tensor(first).numel() > 0


_SUBPROCESS = textwrap.dedent(
    """
    import sys, torch, motensor
    sys.path.insert(0, {tests!r})
    from helpers import modelopt_layout as mol
    from motensor.errors import ShardError
    d = mol.write_checkpoint({tmp!r}, "NVFP4")
    ck = motensor.open(d)
    plan = ck._core.plan()
    arena = torch.empty(plan.total_bytes, dtype=torch.uint8)
    shard = d / "model.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(4096)            # inside the data region; all later pages are gone
    caught = 0
    for call in (lambda: ck.tensor({w!r}), lambda: ck.dequantize({m!r}), lambda: plan.fill_all(arena)):
        try:
            call()
        except ShardError:
            caught += 1
    print("caught", caught)
    """
)


def test_truncated_after_open_never_kills_the_process(tmp_path):
    """The same in a fresh interpreter, so that a SIGBUS would show as a signal exit code
    instead of taking the test runner down."""
    code = _SUBPROCESS.format(tests=str(Path(__file__).parent), tmp=str(tmp_path / "ck"), w=f"{DOWN}.weight", m=DOWN)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode} (negative = killed by signal {-r.returncode}): {r.stderr[-2000:]}"
    assert "caught 3" in r.stdout, r.stdout + r.stderr


def test_deleted_after_open_still_reads(tmp_path):
    # Unlinking keeps the mapping valid: reads go on and give the same bytes.
    d = mol.write_checkpoint(tmp_path, "FP8")
    ck = motensor.open(d)
    w = f"{DOWN}.weight"
    before = ck.tensor(w).view(torch.uint8).clone()
    os.remove(d / SHARD)
    assert torch.equal(ck.tensor(w).view(torch.uint8), before)


# ---------------------------------------------------------------------------------------------
# no panic reaches Python, whatever the input


def _hostile_inputs(tmp: Path):
    """(name, directory) pairs of broken checkpoints, one per class above and a few more."""
    def raw(name, header, data=b"", **kw):
        d = tmp / name
        d.mkdir()
        st.write_raw(d / SHARD, header, data, **kw)
        return name, d

    yield raw("short", b"", prefix=1)
    yield raw("prefix-huge", one_tensor(), b"\0" * 16, prefix=2**64 - 1)
    yield raw("offsets-past", one_tensor("U8", (8,), (8, 16)), b"\0" * 8)
    yield raw("overlap", {"a": st.entry("U8", (4,), 0, 4), "b": st.entry("U8", (4,), 2, 6)}, b"\0" * 6)
    yield raw("span", one_tensor("F32", (3,), (0, 16)), b"\0" * 16)
    yield raw("dtype", one_tensor("F4", (4,), (0, 16)), b"\0" * 16)
    yield raw("json", b"{\"a\":")
    yield raw("utf8", b"{\"\xff\":1}")
    yield raw("dup", [("a", st.entry("U8", (1,), 0, 1)), ("a", st.entry("U8", (1,), 1, 2))], b"\0\0")
    yield raw("deep", b"[" * 200_000)
    yield raw("untorchable", {"w": st.entry("F32", (0, 2**63), 0, 0)})
    for algo in mol.ALL_FORMATS:
        for role in mol.roles(algo):
            name = f"{DOWN}.{role}"
            for i, edit in enumerate([
                lambda ck, name=name: ck.tensors.pop(name),
                lambda ck, name=name: ck.set(name, dtype="I64"),
                lambda ck, name=name: ck.set(name, shape=(3, 0, 5)),
                lambda ck, name=name: ck.set(name, shape=(0, 2**40, 2**20)),
                lambda ck, name=name: ck.set(name, shape=(1,) * 5),
            ]):
                d = tmp / f"{algo}-{role}-{i}"
                yield d.name, mol.write_checkpoint(d, algo, edit)


def test_no_panic_reaches_python(tmp_path):
    """Every hostile input: open, and if it opens, read/dequantize/load everything. Only
    MotensorError (or success) may come out: a PanicException fails the test."""
    seen = 0
    for name, d in _hostile_inputs(tmp_path):
        seen += 1
        try:
            ck = motensor.open(d)
            for t in ck.tensor_names():
                ck.tensor(t)
            for m in ck.modules:
                ck.dequantize(m)
            plan = ck._core.plan()
            plan.fill_all(torch.empty(plan.total_bytes, dtype=torch.uint8))
        except BaseException as e:  # noqa: BLE001
            assert not _is_panic(e), f"{name}: Rust panic reached Python: {e!r}"
            assert isinstance(e, MotensorError), f"{name}: {type(e).__name__}: {e}"
            assert e.file, f"{name}: no file on {e!r}"
            assert not isinstance(e, ArgumentError), f"{name}: {e}"
    assert seen > 100
