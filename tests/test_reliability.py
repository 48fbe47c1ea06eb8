"""Reliability (issue 8): fork-safety, no SIGBUS on files shrinking mid-read, bounded side files,
poisoned scales refused, inconsistent metadata refused, every error a ``motensor.errors`` class.

One test per case. Cases that could kill or hang the interpreter (fork, concurrent truncation)
run in a fresh interpreter with a timeout, so a hang or a signal fails the test instead of the
test run.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
import torch

import motensor
import motensor.errors as errors
from motensor.errors import ArgumentError, ConfigError, FormatError, HeaderError, MotensorError, ShardError
from helpers import modelopt_layout as mol
from helpers import st
from test_hostile import expect

DATA = Path(__file__).parent / "data"
TESTS = Path(__file__).parent
SHARD = "model.safetensors"
QCFG = "hf_quant_config.json"
INDEX = "model.safetensors.index.json"
DOWN = mol.DOWN
ATTN = f"{mol.PREFIX}.self_attn"


def _run(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter (tests/ on the path); fails on a hang or a signal."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"hung: no exit after {timeout} s; output so far: {e.stdout!r} {e.stderr!r}") from None
    assert r.returncode == 0, (f"exit {r.returncode} (negative = killed by signal {-r.returncode}):\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


# ---------------------------------------------------------------------------------------------
# 1. fork


_FORK = """
    import hashlib, multiprocessing as mp, os, torch, motensor
    D = {d!r}

    def digest(tensors):
        # numpy, not torch reductions: torch's own OpenMP pool is not fork-safe (a torch
        # reduction in a forked child can hang in libgomp), which is torch's matter, not motensor's.
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def work(_=None):
        ck = motensor.open(D)
        ws = [ck.dequantize(m) for m in sorted(ck.modules)]
        lc = motensor.load(D, device="cpu", progress=False)
        loaded = [t for mod in lc.modules.values() for t in mod.tensors.values()] + list(lc.tensors.values())
        return digest(ws), digest(loaded), motensor._core.num_threads()

    if __name__ == "__main__":
        parent = work()                      # the pool exists in the parent now
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            child = pool.apply_async(work).get(timeout=120)
        assert child[:2] == parent[:2], (child, parent)
        assert child[2] >= 1
        pid = os.fork()                      # a bare fork too (torch DataLoader workers)
        if pid == 0:
            try:
                ok = work()[:2] == parent[:2]
            finally:
                pass
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("fork ok", parent, child)
"""


def test_open_dequantize_load_in_a_forked_child():
    """Used in the parent, then in a ``multiprocessing`` fork-context worker and a bare
    ``os.fork()`` child: same results, no hang (rayon's global pool used to block forever)."""
    r = _run(_FORK.format(d=str(DATA / "llama-nvfp4-sharded")), timeout=300)
    assert "fork ok" in r.stdout


_FORK_KERNELS = """
    import os, torch
    from motensor.nn import QuantLinear

    torch.manual_seed(0)
    # 1024 x 512 (2^19 weights): the CPU kernels run on motensor's pool, not on the caller alone.
    mods = [QuantLinear.from_float(torch.nn.Linear(512, 1024), f, input_amax=2.0).eval()
            for f in ("NVFP4", "W4A16_AWQ", "FP8")]
    x = torch.randn(1, 512).to(torch.bfloat16)

    def run():
        with torch.no_grad():
            return [m(x).view(torch.int16).numpy().tobytes() for m in mods]

    parent = run()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if run() == parent else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status
    print("fork kernels ok")
"""


def test_cpu_kernels_in_a_forked_child():
    """The prepared CPU layers after a fork: the parallel kernels run on motensor's fork-aware
    pool (rayon's global pool, which they once used, blocks forever in the child)."""
    r = _run(_FORK_KERNELS, timeout=120)
    assert "fork kernels ok" in r.stdout


# ---------------------------------------------------------------------------------------------
# 2. a shard shrinking while it is read


_RACE = """
    import os, random, threading, time, torch, motensor
    from motensor.errors import ShardError
    D = {d!r}
    path = os.path.join(D, "model.safetensors")
    full = open(path, "rb").read()
    random.seed(0)
    outcomes = {{"ok": 0, "ShardError": 0}}

    def shrink(delay):
        time.sleep(delay)
        with open(path, "r+b") as f:
            f.truncate(4096 + random.randrange(1 << 20))

    for i in range({rounds}):
        with open(path, "wb") as f:
            f.write(full)
        ck = motensor.open(D)
        t = threading.Thread(target=shrink, args=(random.uniform(0, 0.004),))
        t.start()
        try:
            if i % 2:
                ck.tensor("w")
            else:
                motensor.load(ck, device="cpu", progress=False)
            outcomes["ok"] += 1
        except ShardError as e:
            assert e.file and e.file.endswith("model.safetensors") and e.tensor == "w", e
            outcomes["ShardError"] += 1
        t.join()
    print("outcomes", outcomes)
"""


def test_shard_truncated_while_it_is_read_is_a_shard_error(tmp_path):
    """Another thread truncates the shard while ``Checkpoint.tensor`` / ``load(device="cpu")``
    read it: each read succeeds or raises ShardError naming file and tensor; the process is
    never killed (a memory map died here with SIGBUS). Reads are ``pread``s, so a short read
    is an error whenever the truncation lands."""
    d = tmp_path / "ck"
    d.mkdir()
    st.write_tensors(d / SHARD, {"w": st.Tensor("U8", (24 << 20,), bytes(24 << 20))})
    r = _run(_RACE.format(d=str(d), rounds=8))
    assert "outcomes" in r.stdout
    counts = eval(r.stdout.split("outcomes", 1)[1].strip())  # noqa: S307 - our own output
    assert counts["ok"] + counts["ShardError"] == 8


def test_shard_truncated_between_open_and_read_names_file_and_tensor(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    st.write_tensors(d / SHARD, {"a": st.Tensor("F32", (4,)), "w": st.Tensor("U8", (1 << 16,))})
    ck = motensor.open(d)
    with open(d / SHARD, "r+b") as f:
        f.truncate(ck.tensor_info("w").offset + 100)
    e = expect(ShardError, lambda: ck.tensor("w"), file=SHARD, tensor="w")
    assert isinstance(e, OSError) and "truncated" in str(e)
    expect(ShardError, lambda: motensor.load(ck, device="cpu", progress=False), file=SHARD)
    assert ck.tensor("a").numel() == 4  # still fully backed


# ---------------------------------------------------------------------------------------------
# 3. side files: bounded size, bounded nesting


def _sparse(path: Path, size: int = 3 << 30) -> None:
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)


def test_oversized_sparse_hf_quant_config_is_refused_before_reading(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "NVFP4")
    _sparse(d / QCFG)
    e = expect(ConfigError, lambda: motensor.open(d), file=QCFG)
    assert "limit" in str(e)


def test_oversized_sparse_config_json_is_refused(tmp_path):
    # Without hf_quant_config.json the core reads config.json for the quantization metadata.
    d = mol.write_checkpoint(tmp_path / "ck", "NVFP4", hf_quant=False)
    _sparse(d / "config.json")
    expect(ConfigError, lambda: motensor.open(d), file="config.json")


def test_oversized_config_json_beside_hf_quant_config_is_refused_by_config(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "NVFP4")
    _sparse(d / "config.json")
    ck = motensor.open(d)
    expect(ConfigError, lambda: ck.config, file="config.json")


def test_oversized_sparse_index_is_refused(tmp_path):
    d = mol.ModelOptCheckpoint.build("FP8").write(tmp_path / "ck", shards=2)
    _sparse(d / INDEX)
    expect(ConfigError, lambda: motensor.open(d), file=INDEX)


def _nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_config_json_is_a_config_error(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "NVFP4")
    (d / "config.json").write_text('{"architectures": ' + _nested() + "}")
    ck = motensor.open(d)  # hf_quant_config.json carries the metadata; config.json is read lazily
    expect(ConfigError, lambda: ck.config, file="config.json")
    expect(ConfigError, lambda: motensor.from_pretrained(d, device="cpu"), file="config.json")


def test_deeply_nested_hf_quant_config_is_a_config_error(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "NVFP4")
    (d / QCFG).write_text('{"quantization": ' + _nested() + "}")
    expect(ConfigError, lambda: motensor.open(d), file=QCFG)


def test_deeply_nested_index_is_a_config_error(tmp_path):
    d = mol.ModelOptCheckpoint.build("FP8").write(tmp_path / "ck", shards=2)
    (d / INDEX).write_text('{"weight_map": {"a": ' + _nested() + "}}")
    expect(ConfigError, lambda: motensor.open(d), file=INDEX)


# ---------------------------------------------------------------------------------------------
# 4. poisoned scales


def _f32(v: float) -> bytes:
    return struct.pack("<f", v)


def _bf16(v: float) -> bytes:
    return struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:]


def _poison(tensor: str, at: int, value: bytes):
    """An edit putting ``value`` (raw element bytes) at element ``at`` of ``tensor``."""
    def edit(ck: mol.ModelOptCheckpoint) -> None:
        t = ck.tensors[tensor]
        data = bytearray(t.payload())
        data[at * len(value):(at + 1) * len(value)] = value
        ck.tensors[tensor] = st.Tensor(t.dtype, t.shape, bytes(data))
    return edit


def _with_kv(algo: str = "FP8", kinds=("k_scale", "v_scale"), kv_algo: str | None = "FP8", edit=None):
    def build(ck: mol.ModelOptCheckpoint) -> None:
        for kind in kinds:
            proj = "k_proj" if kind.startswith("k") else "v_proj"
            ck.tensors[f"{ATTN}.{proj}.{kind}"] = st.Tensor("F32", (), _f32(0.05))
        ck.hf_quant_config["quantization"]["kv_cache_quant_algo"] = kv_algo
        if edit is not None:
            edit(ck)
    return build


NAN, INF = float("nan"), float("inf")

# (case id, format, role, element index, raw bytes): refused when the checkpoint is opened.
AT_OPEN = [
    ("nvfp4-weight_scale_2-nan", "NVFP4", "weight_scale_2", 0, _f32(NAN)),
    ("nvfp4-weight_scale_2-inf", "NVFP4", "weight_scale_2", 0, _f32(INF)),
    ("nvfp4-weight_scale_2-zero", "NVFP4", "weight_scale_2", 0, _f32(0.0)),
    ("nvfp4-weight_scale_2-negative", "NVFP4", "weight_scale_2", 0, _f32(-0.01)),
    ("nvfp4-input_scale-nan", "NVFP4", "input_scale", 0, _f32(NAN)),
    ("nvfp4-input_scale-zero", "NVFP4", "input_scale", 0, _f32(0.0)),
    ("fp8-weight_scale-nan", "FP8", "weight_scale", 0, _f32(NAN)),
    ("fp8-weight_scale-negative", "FP8", "weight_scale", 0, _f32(-1.0)),
    ("fp8-input_scale-inf", "FP8", "input_scale", 0, _f32(-INF)),
    ("w4a8_awq-weight_scale_2-nan", "W4A8_AWQ", "weight_scale_2", 0, _f32(NAN)),
]

# Refused as the bytes pass through the fill (load) and the CPU dequantization.
AT_LOAD = [
    ("nvfp4-block_scale-nan", "NVFP4", "weight_scale", 5, b"\x7f"),
    ("nvfp4-block_scale-negative-nan", "NVFP4", "weight_scale", 7, b"\xff"),
    ("nvfp4-block_scale-negative", "NVFP4", "weight_scale", 9, b"\xb8"),
    ("fp8_per_channel-weight_scale-nan", "FP8_PER_CHANNEL_PER_TOKEN", "weight_scale", 3, _f32(NAN)),
    ("fp8_per_channel-weight_scale-negative", "FP8_PER_CHANNEL_PER_TOKEN", "weight_scale", 3, _f32(-0.5)),
    ("fp8_pb_wo-block_scale-inf", "FP8_PB_WO", "weight_scale", 0, _f32(INF)),
    ("w4a16_awq-group_scale-nan", "W4A16_AWQ", "weight_scale", 11, _f32(NAN)),
    ("mxfp8-e8m0-nan", "MXFP8", "weight_scale", 2, b"\xff"),
    ("mxfp4-e8m0-nan", "MXFP4", "weight_scale", 2, b"\xff"),
]

# pre_quant_scale: read by the fill only (the CPU dequantization does not use it).
PRE_QUANT = [
    ("w4a16_awq-pre_quant_scale-nan", "W4A16_AWQ", 1, _bf16(NAN)),
    ("w4a16_awq-pre_quant_scale-negative", "W4A16_AWQ", 1, _bf16(-1.0)),
    ("w8a8-pre_quant_scale-inf", "W8A8_SQ_PER_CHANNEL", 4, _bf16(INF)),
]


@pytest.mark.parametrize("case,algo,role,at,value", AT_OPEN, ids=[c[0] for c in AT_OPEN])
def test_poisoned_per_tensor_scale_is_refused_at_open(tmp_path, case, algo, role, at, value):
    t = f"{DOWN}.{role}"
    d = mol.write_checkpoint(tmp_path / "ck", algo, _poison(t, at, value))
    e = expect(FormatError, lambda: motensor.open(d), file=SHARD, tensor=t, module=DOWN)
    assert "validate_scales=False" in str(e)
    ck = motensor.open(d, validate_scales=False)  # the opt-out, to inspect the file
    assert not ck.validate_scales
    motensor.load(ck, device="cpu", progress=False)
    ck.dequantize(DOWN)


@pytest.mark.parametrize("case,algo,role,at,value", AT_LOAD, ids=[c[0] for c in AT_LOAD])
def test_poisoned_block_scale_is_refused_by_load_and_dequantize(tmp_path, case, algo, role, at, value):
    t = f"{DOWN}.{role}"
    d = mol.write_checkpoint(tmp_path / "ck", algo, _poison(t, at, value))
    ck = motensor.open(d)
    expect(FormatError, lambda: motensor.load(ck, device="cpu", progress=False), file=SHARD, tensor=t, module=DOWN)
    expect(FormatError, lambda: motensor.load(d, device="cpu", progress=False, modules=DOWN), file=SHARD, tensor=t)
    expect(FormatError, lambda: ck.dequantize(DOWN), file=SHARD, tensor=t, module=DOWN)
    # The staged (CUDA) path's batch loop, run on the CPU with small batches.
    from motensor.loading.load import _load
    expect(FormatError, lambda: _load(ck, "cpu", dtype=None, modules=None, progress=False, chunk_bytes=4096,
                                      num_buffers=2, staged=True), file=SHARD, tensor=t)
    # Opt-out on load as well as on open.
    lc = motensor.load(d, device="cpu", progress=False, validate_scales=False)
    assert DOWN in lc.modules
    motensor.open(d, validate_scales=False).dequantize(DOWN)


@pytest.mark.parametrize("case,algo,at,value", PRE_QUANT, ids=[c[0] for c in PRE_QUANT])
def test_poisoned_pre_quant_scale_is_refused_by_load(tmp_path, case, algo, at, value):
    t = f"{DOWN}.pre_quant_scale"
    d = mol.write_checkpoint(tmp_path / "ck", algo, _poison(t, at, value))
    expect(FormatError, lambda: motensor.load(d, device="cpu", progress=False), file=SHARD, tensor=t, module=DOWN)
    motensor.load(d, device="cpu", progress=False, validate_scales=False)


@pytest.mark.parametrize("kind,value", [("k_scale", _f32(NAN)), ("v_scale", _f32(INF)), ("k_scale", _f32(0.0)),
                                        ("v_scale", _f32(-0.1))])
def test_poisoned_kv_scale_is_refused_at_open(tmp_path, kind, value):
    proj = "k_proj" if kind == "k_scale" else "v_proj"
    t = f"{ATTN}.{proj}.{kind}"
    d = mol.write_checkpoint(tmp_path / "ck", "FP8", _with_kv(edit=_poison(t, 0, value)))
    expect(FormatError, lambda: motensor.open(d), file=SHARD, tensor=t, module=ATTN)
    motensor.open(d, validate_scales=False)


def test_all_zero_blocks_are_legal(tmp_path):
    """Block scale 0 (and -0) is what an all-zero block exports: it must load and dequantize to
    zeros, not be taken for a poisoned scale."""
    def zero_first_row(ck: mol.ModelOptCheckpoint) -> None:
        n, k = mol.LINEARS[DOWN]
        w, s = ck.tensors[f"{DOWN}.weight"], ck.tensors[f"{DOWN}.weight_scale"]
        wd, sd = bytearray(w.payload()), bytearray(s.payload())
        wd[: k // 2] = bytes(k // 2)
        groups = k // mol.GROUP["NVFP4"]
        sd[:groups] = bytes(groups)
        sd[groups] = 0x80  # -0 in row 1: a zero, not a negative scale
        ck.tensors[f"{DOWN}.weight"] = st.Tensor(w.dtype, w.shape, bytes(wd))
        ck.tensors[f"{DOWN}.weight_scale"] = st.Tensor(s.dtype, s.shape, bytes(sd))

    d = mol.write_checkpoint(tmp_path / "ck", "NVFP4", zero_first_row)
    ck = motensor.open(d)
    w = ck.dequantize(DOWN)
    assert torch.all(w[0] == 0) and torch.isfinite(w).all()
    lc = motensor.load(ck, device="cpu", progress=False)
    assert DOWN in lc.modules


# ---------------------------------------------------------------------------------------------
# 5. inconsistent metadata


def test_unknown_kv_cache_quant_algo_is_a_config_error(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "FP8", _with_kv(kv_algo="GARBAGE!!"))
    e = expect(ConfigError, lambda: motensor.open(d), file=QCFG)
    assert "GARBAGE!!" in str(e) and "FP8" in str(e)


def test_unknown_kv_cache_scheme_in_config_json_is_a_config_error(tmp_path):
    def edit(ck):
        ck.config["quantization_config"]["kv_cache_scheme"] = {"type": "float", "num_bits": 3}
    d = mol.write_checkpoint(tmp_path / "ck", "FP8", edit, hf_quant=False)
    expect(ConfigError, lambda: motensor.open(d), file="config.json")


def test_fp8_kv_cache_without_kv_scales_is_refused(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "FP8", _with_kv(kinds=()))
    e = expect(ConfigError, lambda: motensor.open(d), file=QCFG)
    assert "k_scale" in str(e)
    ck = motensor.open(d, validate_scales=False)  # inspecting: a note instead
    assert any("k_scale" in n for n in ck.notes)


def test_fp8_kv_cache_with_only_k_scale_names_the_attention(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "FP8", _with_kv(kinds=("k_scale",)))
    e = expect(FormatError, lambda: motensor.open(d), file=QCFG, module=ATTN)
    assert "v_scale" in str(e)


def test_kv_scales_without_kv_cache_algo_are_a_note(tmp_path):
    d = mol.write_checkpoint(tmp_path / "ck", "FP8", _with_kv(kv_algo=None))
    ck = motensor.open(d)
    assert any("kv_cache_quant_algo" in n for n in ck.notes)


def test_index_with_empty_weight_map_is_a_config_error(tmp_path):
    d = mol.ModelOptCheckpoint.build("FP8").write(tmp_path / "ck", shards=2)
    idx = json.loads((d / INDEX).read_text())
    idx["weight_map"] = {}
    (d / INDEX).write_text(json.dumps(idx))
    e = expect(ConfigError, lambda: motensor.open(d), file=INDEX)
    assert "empty" in str(e)


def test_index_listing_a_tensor_twice_is_a_config_error(tmp_path):
    d = mol.ModelOptCheckpoint.build("FP8").write(tmp_path / "ck", shards=2)
    wm = json.loads((d / INDEX).read_text())["weight_map"]
    name, shard = next(iter(wm.items()))
    other = next(f for f in set(wm.values()) if f != shard)
    body = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in wm.items())
    (d / INDEX).write_text('{"weight_map": {' + body + f", {json.dumps(name)}: {json.dumps(other)}" + "}}")
    e = expect(ConfigError, lambda: motensor.open(d), file=INDEX)
    assert name in str(e) and "twice" in str(e)


# ---------------------------------------------------------------------------------------------
# 6. every error a motensor.errors class


CLASSES = [errors.MotensorError, errors.HeaderError, errors.ShardError, errors.ConfigError, errors.FormatError,
           errors.UnsupportedFormatError, errors.ArgumentError, errors.UnsupportedArchitectureError]


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_exception_classes_live_in_motensor_errors(cls):
    assert cls.__module__ == "motensor.errors"
    assert issubclass(cls, MotensorError)
    assert getattr(motensor, cls.__name__, cls) is cls


def test_exception_classes_derive_from_the_builtin_python_users_catch():
    assert issubclass(ShardError, OSError)
    for cls in (ArgumentError, FormatError, ConfigError, HeaderError):
        assert issubclass(cls, ValueError), cls


def test_errors_raised_by_the_rust_core_are_the_python_classes(tmp_path):
    try:
        motensor.open(tmp_path / "nope")
    except OSError as e:  # caught as Python users catch a missing file
        assert type(e) is ShardError and e.file is not None
        text = "".join(traceback.format_exception_only(type(e), e))
        assert text.startswith("motensor.errors.ShardError"), text
    else:
        raise AssertionError("no error")


def test_opening_a_json_file_says_it_is_not_a_safetensors_file():
    p = DATA / "llama-nvfp4" / "config.json"
    e = expect(HeaderError, lambda: motensor.open(p), file="config.json")
    assert "not a safetensors file" in str(e) and "exceeds" not in str(e)


@pytest.mark.parametrize("device", ["bogus", "xpu", "meta", "cuda:x", -1, 1.5, None])
def test_bad_device_is_an_argument_error(device):
    expect(ArgumentError, lambda: motensor.load(DATA / "llama-nvfp4", device=device, progress=False), file=None)


def test_dequantize_to_a_non_float_dtype_is_an_argument_error():
    ck = motensor.open(DATA / "llama-nvfp4")
    expect(ArgumentError, lambda: ck.dequantize(DOWN, dtype=torch.int8), file=None, module=DOWN)
    expect(ArgumentError, lambda: ck.dequantize(DOWN, dtype="float32"), file=None)


@pytest.mark.parametrize("kwargs", [dict(dtype="fp17"), dict(dtype=torch.int8), dict(chunk_bytes=0),
                                    dict(num_buffers="2"), dict(modules=[3]), dict(validate_scales="yes")],
                         ids=["dtype-unknown-str", "dtype-int8", "chunk0", "num_buffers-str", "modules-int", "validate-str"])
def test_bad_load_arguments_are_argument_errors(kwargs):
    expect(ArgumentError, lambda: motensor.load(DATA / "llama-nvfp4", device="cpu", progress=False, **kwargs),
           file=None)


@pytest.mark.parametrize("path", [3, None, b"bytes"])
def test_bad_checkpoint_argument_is_an_argument_error(path):
    expect(ArgumentError, lambda: motensor.open(path), file=None)


def test_unknown_tensor_is_an_argument_error():
    ck = motensor.open(DATA / "llama-nvfp4")
    expect(ArgumentError, lambda: ck.tensor("model.nope.weight"), file=None)
    expect(ArgumentError, lambda: ck.tensor(7), file=None)
