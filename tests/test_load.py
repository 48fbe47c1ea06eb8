"""motensor.load: every tensor byte-equal to what safetensors reads (through the kernel-layout
mapping of motensor.layout for re-laid-out ones), on the direct CPU path and on the staged path
(the CUDA batch loop run with ordinary buffers), plus the failure, memory and argument rules.

GPU tests are marked ``gpu`` and skipped without one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import motensor
from motensor.errors import ArgumentError, ShardError
from motensor.formats import FORMAT_NAMES, Element, ScaleLayout, get_format
from motensor.layout import to_kernel_layout
from motensor.loading import staging
from motensor.loading.load import _load
from motensor.quantize import quantize_weight

from helpers.fixtures import fixture_dirs

N, K = 256, 512
VOCAB = 128
MODULE = "model.layers.0.mlp.down_proj"
#: Smaller than the embedding (128 KiB) and most weights, larger than every row granule
#: (transposed fp32 AWQ scales: N * 4 = 1 KiB), and deliberately not a power of two.
SMALL_CHUNK = 3000


# -- synthetic checkpoints ----------------------------------------------------------------------
def _quant_config(algo: str, kv: str | None = "FP8", **extra) -> dict:
    # kv: the checkpoints written with _plain_tensors carry k/v scales; the others have none,
    # and an FP8 KV cache without scales is refused (tests/test_reliability.py).
    q = {"quant_algo": algo, "kv_cache_quant_algo": kv, "exclude_modules": ["lm_head"], **extra}
    return {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": q}


def _module_tensors(fmt: str, name: str, n: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    spec = get_format(fmt)
    w = torch.randn(n, k, generator=gen) * 0.05
    out = quantize_weight(spec, w, input_amax=3.0)
    # Variants the loader must accept (FORMATS 3.3, 4.7, 2): a [1]-shaped bf16 scalar scale,
    # INT4 stored as I8 (ModelOpt 0.23), E8M0 scales with their own dtype.
    if fmt == "FP8":
        out["weight_scale"] = out["weight_scale"].reshape(1).to(torch.bfloat16)
    if fmt == "W4A8_AWQ":
        out["weight"] = out["weight"].view(torch.int8)
    if fmt == "MXFP4" and hasattr(torch, "float8_e8m0fnu"):
        out["weight_scale"] = out["weight_scale"].view(torch.float8_e8m0fnu)
    if spec.rule("pre_quant_scale") is not None:
        out["pre_quant_scale"] = (1 + 0.1 * torch.rand(k, generator=gen)).to(torch.bfloat16)
    out["bias"] = torch.randn(n, generator=gen).to(torch.bfloat16)
    return {f"{name}.{role}": t for role, t in out.items()}


def _plain_tensors(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "model.embed_tokens.weight": torch.randn(VOCAB, K, generator=gen).to(torch.bfloat16),
        "model.norm.weight": (1 + 0.1 * torch.randn(K, generator=gen)).to(torch.bfloat16),
        "lm_head.weight": torch.randn(VOCAB, K, generator=gen).to(torch.bfloat16),
        "model.layers.0.self_attn.k_proj.k_scale": torch.tensor(0.05),
        "model.layers.0.self_attn.v_proj.v_scale": torch.tensor(0.07),
    }


def write_format_checkpoint(root: Path, fmt: str) -> Path:
    """One quantized module of ``fmt`` plus unquantized embedding/norm/lm_head and KV scales."""
    gen = torch.Generator().manual_seed(hash(fmt) % 2**31)
    root.mkdir(parents=True)
    tensors = {**_plain_tensors(gen), **_module_tensors(fmt, MODULE, N, K, gen)}
    save_file(tensors, root / "model.safetensors")
    spec = get_format(fmt)
    extra = {"group_size": spec.default_group} if spec.default_group else {}
    (root / "hf_quant_config.json").write_text(json.dumps(_quant_config(fmt, **extra)))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": K}))
    return root


#: The sharded checkpoint: several formats (MIXED_PRECISION), spread over 3 shards.
SHARDED_LAYERS = {
    "model.layers.0.self_attn.q_proj": ("NVFP4", 16),
    "model.layers.0.self_attn.o_proj": ("W4A16_AWQ", 128),
    "model.layers.0.mlp.gate_proj": ("FP8", None),
    "model.layers.1.mlp.down_proj": ("MXFP8", 32),
    "model.layers.1.mlp.up_proj": ("W4A8_NVFP4_FP8", 32),
}


def write_sharded_checkpoint(root: Path) -> Path:
    gen = torch.Generator().manual_seed(7)
    root.mkdir(parents=True)
    tensors = _plain_tensors(gen)
    tensors["model.layers.0.input_layernorm.weight"] = torch.ones(K, dtype=torch.bfloat16)
    for name, (fmt, _) in SHARDED_LAYERS.items():
        tensors.update(_module_tensors(fmt, name, N, K, gen))
    # Shard 1: embedding and layer 0; shard 2: layer 1; shard 3: final norm and lm_head
    # (as HF splits by layer order, so each module sits in one shard).
    def shard_of(name: str) -> int:
        return 0 if name.startswith(("model.embed", "model.layers.0.")) else 1 if name.startswith("model.layers.1.") else 2

    shards = [sorted(n for n in tensors if shard_of(n) == i) for i in range(3)]
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in part}, root / fname)
        weight_map.update({n: fname for n in part})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    layers = {n: {"quant_algo": f, **({"group_size": g} if g else {})} for n, (f, g) in SHARDED_LAYERS.items()}
    q = _quant_config("MIXED_PRECISION", quantized_layers=layers)
    del q["quantization"]["exclude_modules"]
    (root / "hf_quant_config.json").write_text(json.dumps(q))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": K}))
    return root


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("load")


@pytest.fixture(scope="module")
def format_ckpts(ckpt_root) -> dict[str, Path]:
    return {fmt: write_format_checkpoint(ckpt_root / fmt.lower(), fmt) for fmt in FORMAT_NAMES}


@pytest.fixture(scope="module")
def sharded(ckpt_root) -> Path:
    return write_sharded_checkpoint(ckpt_root / "sharded")


@pytest.fixture()
def sharded_copy(sharded, tmp_path) -> Path:
    """A private copy, for tests that damage files."""
    dst = tmp_path / "sharded"
    dst.mkdir()
    for f in sharded.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


# -- references ---------------------------------------------------------------------------------
def reference(ck: motensor.Checkpoint) -> dict[str, torch.Tensor]:
    """Every tensor as safetensors reads it, module tensors mapped to kernel layout in torch."""
    raw: dict[str, torch.Tensor] = {}
    for shard in ck.shards:
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():
                raw[name] = f.get_tensor(name)
    out = dict(raw)
    for m in ck.modules.values():
        for role, name in m.tensors.items():
            t = raw[name]
            if m.bmm and t.dim() == 3:  # in-place experts are stored input-major [E, K', N]
                t = t.transpose(1, 2).contiguous()
            out[name] = to_kernel_layout(m.format, role, t)
    return out


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def assert_same(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(as_bytes(got), as_bytes(want)), f"{name}: bytes differ"


def assert_matches_reference(loaded: motensor.LoadedCheckpoint, ref: dict[str, torch.Tensor]) -> None:
    got = loaded.state_dict()
    assert set(got) == set(ref)
    for name, want in ref.items():
        assert_same(got[name], want, name)


def load_cpu(path, *, staged: bool, chunk_bytes: int = SMALL_CHUNK, num_buffers: int = 3, **kw):
    """The CPU path (``staged=False``) or the CUDA batch loop run on CPU buffers (``True``)."""
    kw.setdefault("dtype", None)
    kw.setdefault("modules", None)
    return _load(path, "cpu", progress=False, chunk_bytes=chunk_bytes, num_buffers=num_buffers, staged=staged, **kw)


# -- correctness --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_every_format_loads_byte_exact(format_ckpts, fmt):
    ck = motensor.open(format_ckpts[fmt])
    assert set(ck.modules) == {MODULE}, "the synthetic checkpoint must hold one quantized module"
    ref = reference(ck)
    direct = motensor.load(ck, "cpu", progress=False)
    assert not direct.stats.staged and direct.device == torch.device("cpu")
    assert_matches_reference(direct, ref)
    staged = load_cpu(ck, staged=True)
    assert staged.stats.staged and staged.stats.batches > 1
    assert_matches_reference(staged, ref)
    # The layout contract the kernels rely on, not only agreement with motensor.layout.
    w = direct.modules[MODULE]["weight"]
    spec = get_format(fmt)
    if spec.element in (Element.E2M1, Element.INT4):
        assert w.dtype == torch.uint8 and tuple(w.shape) == (N, K // 2)
    for role, t in direct.modules[MODULE].tensors.items():
        rule = spec.rule(role)
        if rule is not None and rule.shape == "scalar":
            assert t.dim() == 0 and t.dtype == torch.float32, role
        if role == "weight_scale" and spec.scale_layout is ScaleLayout.GROUPS_TRANSPOSED:
            assert tuple(t.shape) == (K // direct.modules[MODULE].info.group_size, N)


@pytest.mark.parametrize("chunk,buffers", [(SMALL_CHUNK, 1), (4096 + 3, 3), (1 << 20, 2)])
def test_sharded_checkpoint_staged_and_direct(sharded, chunk, buffers):
    ck = motensor.open(sharded)
    assert len(ck.shards) == 3
    assert {m.quant_algo for m in ck.modules.values()} == {f for f, _ in SHARDED_LAYERS.values()}
    ref = reference(ck)
    assert_matches_reference(load_cpu(ck, staged=True, chunk_bytes=chunk, num_buffers=buffers), ref)
    assert_matches_reference(load_cpu(ck, staged=False, chunk_bytes=chunk), ref)


@pytest.mark.parametrize("fixture", fixture_dirs(), ids=lambda p: p.name)
def test_real_modelopt_fixtures(fixture):
    ck = motensor.open(fixture)
    ref = reference(ck)
    assert_matches_reference(motensor.load(ck, "cpu", progress=False), ref)
    assert_matches_reference(load_cpu(ck, staged=True, chunk_bytes=64 << 10), ref)


@pytest.mark.parametrize("fmt", ["W4A16_AWQ", "MXFP4", "MXFP8"])
def test_stacked_experts_relayout_across_batches(tmp_path, fmt):
    # Weights with a leading expert dim [E, N, K]: the re-layouts restart per expert, and small
    # batches cut between (and inside) experts.
    gen = torch.Generator().manual_seed(3)
    experts = [quantize_weight(fmt, torch.randn(64, 256, generator=gen)) for _ in range(3)]
    name = "model.layers.0.mlp.experts"
    tensors = {f"{name}.{role}": torch.stack([e[role] for e in experts]) for role in experts[0]}
    save_file(tensors, tmp_path / "model.safetensors")
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(_quant_config(fmt, kv=None, group_size=get_format(fmt).default_group)))
    ck = motensor.open(tmp_path)
    assert ck.modules[name].lead == (3,)
    ref = reference(ck)
    for chunk in (1000, 4096, 1 << 20):
        assert_matches_reference(load_cpu(ck, staged=True, chunk_bytes=chunk), ref)
    assert_matches_reference(load_cpu(ck, staged=False), ref)


def test_single_block_fp8_pb_wo_scale_loads_as_2d(tmp_path):
    # ModelOpt writes the scale of a weight that fits one 128x128 block as a 0-d tensor; the
    # kernels take [N/128, K/128] whatever the size.
    q = quantize_weight("FP8_PB_WO", torch.randn(64, 128))
    q["weight_scale"] = q["weight_scale"].reshape(())
    save_file({f"{MODULE}.{r}": t for r, t in q.items()}, tmp_path / "model.safetensors")
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(_quant_config("FP8_PB_WO", kv=None)))
    scale = motensor.load(tmp_path, "cpu", progress=False).modules[MODULE]["weight_scale"]
    assert tuple(scale.shape) == (1, 1) and scale.item() == q["weight_scale"].item()


def test_staging_ring_smaller_than_a_tensor(sharded):
    ck = motensor.open(sharded)
    largest = max(i["nbytes"] for i in ck._core.plan().items())
    assert largest > 10 * SMALL_CHUNK
    lc = load_cpu(ck, staged=True, num_buffers=2)
    assert lc.stats.staging_bytes <= 2 * SMALL_CHUNK
    assert lc.stats.batches >= lc.stats.arena_bytes // SMALL_CHUNK
    assert_matches_reference(lc, reference(ck))


def test_chunk_smaller_than_a_row_is_refused(format_ckpts):
    # W4A16_AWQ's transposed fp32 scales have rows of N * 4 bytes; no batch may split a row.
    with pytest.raises(ArgumentError, match="cannot be cut"):
        load_cpu(format_ckpts["W4A16_AWQ"], staged=True, chunk_bytes=N * 4 - 1)


def test_tensors_live_in_one_arena_not_in_staging(sharded):
    lc = load_cpu(sharded, staged=True, num_buffers=2)
    base = lc.arena.untyped_storage().data_ptr()
    for name, t in lc.state_dict().items():
        assert t.untyped_storage().data_ptr() == base, name
    assert lc.arena.numel() == lc.stats.arena_bytes
    # Offsets are 256-byte aligned (vector loads in the kernels rely on it).
    assert all((t.data_ptr() - base) % 256 == 0 for t in lc.state_dict().values())


# -- failures, memory ---------------------------------------------------------------------------
@pytest.mark.parametrize("staged", [False, True])
def test_file_truncated_after_open_raises_shard_error(sharded_copy, staged):
    ck = motensor.open(sharded_copy)
    victim = Path(ck.shards[1])
    os.truncate(victim, victim.stat().st_size // 2)
    with pytest.raises(ShardError) as e:
        load_cpu(ck, staged=staged)
    assert "truncated" in str(e.value).lower() or victim.name in str(e.value)
    assert staging.live_buffers() == 0


def test_twenty_loads_leak_no_staging_buffers(sharded):
    ck = motensor.open(sharded)
    ref = reference(ck)
    staging.peak_live_buffers(reset=True)
    assert staging.live_buffers() == 0
    results = []
    for _ in range(20):
        results.append(load_cpu(ck, staged=True, num_buffers=3))
        assert staging.live_buffers() == 0
    assert staging.peak_live_buffers() == 3  # the ring was used in full, and never exceeded
    # Earlier results are untouched by later loads that reused the same staging sizes.
    assert_matches_reference(results[0], ref)


# -- arguments ----------------------------------------------------------------------------------
def _file_bytes(ck: motensor.Checkpoint, names) -> int:
    return sum(ck.tensor_info(n).nbytes for n in names)


def test_modules_loads_only_those_tensors(sharded_copy):
    ck = motensor.open(sharded_copy)
    ref = reference(ck)
    q = "model.layers.0.self_attn.q_proj"
    owner = {n: Path(ck.tensor_info(n).file) for n in ck.tensor_names()}
    # Damage every shard that holds none of q_proj's tensors: a partial load must not read them.
    wanted = set(ck.modules[q].tensors.values())
    damaged = [s for s in map(Path, ck.shards) if not any(owner[n] == s for n in wanted)]
    assert len(damaged) == 2
    for shard in damaged:
        os.truncate(shard, 64 + shard.stat().st_size // 2)
    for staged in (False, True):
        lc = load_cpu(ck, staged=staged, modules=q)
        assert set(lc.modules) == {q} and lc.tensors == {}
        assert lc.stats.source_bytes == _file_bytes(ck, wanted)
        for role, t in lc.modules[q].tensors.items():
            assert_same(t, ref[ck.modules[q].tensors[role]], role)
    with pytest.raises(ShardError):
        load_cpu(ck, staged=False)


def test_modules_globs_and_prefixes(sharded):
    ck = motensor.open(sharded)
    lc = motensor.load(ck, "cpu", modules=["model.layers.1.*"], progress=False)
    assert set(lc.modules) == {"model.layers.1.mlp.down_proj", "model.layers.1.mlp.up_proj"}
    lc = motensor.load(ck, "cpu", modules="model.layers.0", progress=False)
    assert set(lc.modules) == {n for n in SHARDED_LAYERS if n.startswith("model.layers.0.")}
    assert set(lc.tensors) == {
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.k_proj.k_scale",
        "model.layers.0.self_attn.v_proj.v_scale",
    }
    with pytest.raises(ArgumentError):
        motensor.load(ck, "cpu", modules=["no.such.module"], progress=False)
    with pytest.raises(ArgumentError):
        motensor.load(ck, "cpu", modules=[3], progress=False)


@pytest.mark.parametrize("staged", [False, True])
def test_dtype_casts_only_unquantized_floats(format_ckpts, staged):
    ck = motensor.open(format_ckpts["W4A16_AWQ"])
    ref = reference(ck)
    lc = load_cpu(ck, staged=staged, dtype=torch.float16)
    m = lc.modules[MODULE]
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert_same(lc.tensors[name], ref[name].to(torch.float16), name)
    for role in ("pre_quant_scale", "bias"):
        assert_same(m[role], ref[ck.modules[MODULE].tensors[role]].to(torch.float16), role)
    for role in ("weight", "weight_scale"):
        assert_same(m[role], ref[ck.modules[MODULE].tensors[role]], role)
    assert_same(lc.tensors["model.layers.0.self_attn.k_proj.k_scale"], ref["model.layers.0.self_attn.k_proj.k_scale"], "k_scale")
    # Same-size casts stay in the arena; widening ones cannot.
    base = lc.arena.untyped_storage().data_ptr()
    assert lc.tensors["model.embed_tokens.weight"].untyped_storage().data_ptr() == base
    wide = load_cpu(ck, staged=staged, dtype=torch.float32)
    assert_same(wide.tensors["model.norm.weight"], ref["model.norm.weight"].float(), "norm")
    assert wide.tensors["model.norm.weight"].untyped_storage().data_ptr() != wide.arena.untyped_storage().data_ptr()
    with pytest.raises(ArgumentError):
        motensor.load(ck, "cpu", dtype=torch.int8, progress=False)


def test_fp32_to_bf16_cast_shrinks_in_place(tmp_path):
    save_file({"model.norm.weight": torch.randn(300), "model.embed_tokens.weight": torch.randn(7, 5)}, tmp_path / "model.safetensors")
    lc = motensor.load(tmp_path, "cpu", dtype=torch.bfloat16, progress=False)
    ref = reference(lc.checkpoint)
    for name, t in lc.tensors.items():
        assert_same(t, ref[name].to(torch.bfloat16), name)
        assert t.untyped_storage().data_ptr() == lc.arena.untyped_storage().data_ptr()


def test_result_api(sharded):
    lc = motensor.load(str(sharded), "cpu", progress=True)
    ck = lc.checkpoint
    assert isinstance(lc, motensor.LoadedCheckpoint)
    assert lc.quant_config.quant_algo == "MIXED_PRECISION"
    assert lc.config["architectures"] == ["LlamaForCausalLM"]
    assert set(lc.state_dict()) == set(ck.tensor_names())
    st = lc.stats
    assert st.source_bytes == ck.total_bytes and st.arena_bytes >= st.source_bytes - 64
    assert st.seconds >= st.open_seconds > 0 and st.gbps > 0 and st.threads >= 1
    m = lc["model.layers.0.self_attn.o_proj"]
    assert isinstance(m, motensor.LoadedModule) and m.format.name == "W4A16_AWQ" and m.info.k == K
    assert list(m.tensors)[0] == "weight" and "pre_quant_scale" in m
    assert "W4A16_AWQ" in repr(m) and "MIXED_PRECISION" in repr(lc) and "GB/s" in repr(lc)
    assert len(lc) == len(SHARDED_LAYERS) and set(lc) == set(SHARDED_LAYERS)


def test_load_logs_its_rate(sharded, caplog):
    with caplog.at_level("INFO", logger="motensor.loading"):
        motensor.load(sharded, "cpu", progress=False)
    assert any("GB/s" in r.getMessage() for r in caplog.records)


def test_motensor_num_threads_is_honoured(sharded):
    # Opening a checkpoint already runs on rayon's pool, so MOTENSOR_NUM_THREADS must size it
    # when the extension loads. The extension alone, in a fresh process (no torch import).
    so = Path(motensor._core.__file__)
    code = (
        "import importlib.util as u; "
        f"s = u.spec_from_file_location('motensor._core', {str(so)!r}); c = u.module_from_spec(s); "
        f"s.loader.exec_module(c); c.Checkpoint({str(sharded)!r}); print(c.num_threads())"
    )
    env = {**os.environ, "MOTENSOR_NUM_THREADS": "5"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_cuda_without_gpu_is_a_clear_error(sharded):
    with pytest.raises(ArgumentError, match="CUDA"):
        motensor.load(sharded, "cuda", progress=False)


# -- GPU ----------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("chunk,buffers", [(None, None), (SMALL_CHUNK, 2), (1 << 16, 4)])
def test_cuda_load_equals_cpu_load(sharded, format_ckpts, chunk, buffers):
    kw = {} if chunk is None else {"chunk_bytes": chunk, "num_buffers": buffers}
    for path in (sharded, format_ckpts["NVFP4"], format_ckpts["W4A16_AWQ"]):
        cpu = motensor.load(path, "cpu", progress=False).state_dict()
        lc = motensor.load(path, "cuda", progress=False, **kw)
        assert lc.device.type == "cuda" and lc.stats.staged
        got = lc.state_dict()
        assert set(got) == set(cpu)
        for name, t in got.items():
            assert t.device == lc.device
            assert_same(t, cpu[name], name)


@pytest.mark.gpu
def test_cuda_pinned_buffers_are_reused_and_released(sharded):
    kw = {"chunk_bytes": 1 << 16, "num_buffers": 3, "progress": False}
    motensor.load(sharded, "cuda", **kw)  # first load: the host allocator grows its pool
    before = torch.cuda.host_memory_stats()
    first = motensor.load(sharded, "cuda", **kw)
    ref = {k: v.cpu().clone() for k, v in first.state_dict().items()}
    for _ in range(5):
        motensor.load(sharded, "cuda", **kw)
        assert staging.live_buffers() == 0
    torch.cuda.synchronize()
    after = torch.cuda.host_memory_stats()
    for key in ("num_host_alloc", "allocations.current"):
        if key in before:
            assert after[key] == before[key], key  # no new cudaHostAlloc after the first load
    # Later loads reused the same pinned buffers; the first result must be intact.
    for name, t in first.state_dict().items():
        assert_same(t, ref[name], name)


@pytest.mark.gpu
def test_cuda_devices_and_dtype(format_ckpts):
    path = format_ckpts["NVFP4"]
    cpu = motensor.load(path, "cpu", dtype=torch.float16, progress=False).state_dict()
    for device in ("cuda", 0, torch.device("cuda:0")):
        lc = motensor.load(path, device, dtype=torch.float16, progress=False)
        assert lc.device == torch.device("cuda", 0)
        for name, t in lc.state_dict().items():
            assert_same(t, cpu[name], name)
