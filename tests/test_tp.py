"""Tensor parallelism: 2 ranks over gloo (``torch.distributed.run``), against the single-process model.

One ``torchrun --nproc-per-node 2 -m motensor.parallel.check`` loads every checkpoint below with
``motensor.from_pretrained(..., tp_plan="auto")`` (the model's own transformers TP plan) and runs one
forward; this process loads the same checkpoints without TP. Checked per checkpoint:

* the logits equal the single-process model's within fp32 rounding (the row-parallel layers
  sum two partial products instead of one);
* each rank holds about half of the quantized modules' bytes (weights and scales, measured on the
  modules) and reads about half of them from the files: the Rust fill counts the bytes it copies
  out of the checkpoint, and those are compared with the single-process load's, less the tensors
  every rank reads whole (embeddings, norms);
* a K that does not split into whole scale groups (the W4A16_AWQ fixture: o_proj K = 128, group
  128) is refused with a ``FormatError`` naming the module.

The same child loads the quantized fixtures with ``AutoModelForCausalLM.from_pretrained(path,
tp_plan="auto")`` too (transformers' front door, motensor's quantizer), which must build the same
sharded model; transformers' expert parallelism (``ep_size``) is refused with a clear error.

The sliced load itself (every slice of every role, re-laid-out) is checked against slicing the
whole load in ``test_sliced_load_equals_slicing_the_whole_load``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import motensor
from helpers.fixtures import DATA
from motensor.loading.load import _load
from motensor.parallel import tp
from motensor.parallel.check import single_process

WORLD = 2
#: fixtures (tests/data) run under TP: formats of the issue (NVFP4, FP8, MoE) plus the two whose
#: row-parallel layers need a global activation amax, and an unquantized one (plain Linears).
FIXTURES = ["llama-nvfp4", "llama-fp8", "qwen3moe-nvfp4", "mixtral-nvfp4", "llama-fp8_per_channel_per_token",
            "llama-w4a8_mxfp4_fp8", "llama-bf16"]
#: also loaded with ``AutoModelForCausalLM.from_pretrained(path, tp_plan="auto")`` (motensor's quantizer):
#: dense and MoE (transformers' plan: moe_tp_experts, packed_colwise gate_up, rowwise down).
TRANSFORMERS = ["llama-nvfp4", "llama-fp8", "qwen3moe-nvfp4", "mixtral-nvfp4", "llama-fp8_per_channel_per_token"]
#: loaded with transformers' expert parallelism (DistributedConfig(ep_size=2)): refused.
EP = "qwen3moe-nvfp4"
#: refused: row-parallel K = 128 / 2 ranks = 64 columns, half a group of 128.
REFUSED = "llama-w4a16_awq"
TIMEOUT = 600


def _awq_checkpoint(root: Path) -> Path:
    """A W4A16_AWQ Llama wide enough to split at group boundaries over 2 ranks (K/2 >= 128)."""
    import transformers
    from test_models_synthetic import export_checkpoint

    cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=64, vocab_size=256, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.08) if p.dim() >= 2 else p.uniform_(0.6, 1.2)
    return export_checkpoint(model, root / "llama-w4a16_awq-wide")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    paths = {name: str(DATA / name) for name in FIXTURES + [REFUSED]}
    paths["w4a16_awq-wide"] = str(_awq_checkpoint(root))
    out = root / "out.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MOTENSOR_NUM_THREADS="1", TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-port",
           str(29500 + os.getpid() % 400), "-m", "motensor.parallel.check", str(out), *paths.values()]
    for name in TRANSFORMERS + [REFUSED]:
        cmd += ["--transformers", paths[name]]
    cmd += ["--transformers-ep", paths[EP]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = json.loads(out.read_text())
    by_name = {name: results[p] for name, p in paths.items()}
    for front in ("transformers", "transformers-ep"):
        by_name.update({f"{front}:{name}": results[f"{front}:{p}"] for name, p in paths.items()
                        if f"{front}:{p}" in results})
    return by_name, paths


def _plain_bytes(path: str, sliced: list[str], single_read: int) -> int:
    """Bytes of the tensors every rank reads whole: all the load reads less what is sliced."""
    ck = motensor.open(path)
    return single_read - sum(ck.tensor_info(t).nbytes for t in sliced)


@pytest.mark.parametrize("name", FIXTURES + ["w4a16_awq-wide"])
def test_tp_logits_and_bytes_per_rank(runs, name):
    results, paths = runs
    r = results[name]
    assert "error" not in r, r
    single = single_process(paths[name])
    ref, got = torch.tensor(single["logits"]), torch.tensor(r["logits"])
    assert ref.shape == got.shape
    err, scale = (ref - got).abs().max().item(), ref.abs().max().item()
    assert err <= 1e-4 * scale + 1e-5, f"{name}: max |logit diff| {err:.3g} (logits up to {scale:.3g})"

    ranks = r["ranks"]
    assert len(ranks) == WORLD
    held = [x["held_bytes"] for x in ranks]
    if single["held_bytes"]:
        for h in held:
            assert 0.45 <= h / single["held_bytes"] <= 0.56, (name, held, single["held_bytes"])
    sliced = ranks[0]["sliced_tensors"]
    assert sliced, f"{name}: nothing was sharded"
    whole = _plain_bytes(paths[name], sliced, single["measured_read_bytes"])
    quantized_or_sharded = single["measured_read_bytes"] - whole
    for x in ranks:
        assert x["measured_read_bytes"] == x["planned_read_bytes"], x
        share = (x["measured_read_bytes"] - whole) / quantized_or_sharded
        assert 0.45 <= share <= 0.56, f"{name}: a rank read {share:.1%} of the sharded tensors' bytes"


def test_k_not_divisible_by_group_is_refused(runs):
    results, _ = runs
    r = results[REFUSED]
    assert r.get("error") == "FormatError", r
    msg = r["message"]
    assert "model.layers.0.self_attn.o_proj" in msg or "down_proj" in msg, msg
    assert "W4A16_AWQ" in msg and "multiple of 128" in msg, msg


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_automodel_tp_plan_builds_the_same_sharded_model(runs, name):
    """``AutoModelForCausalLM.from_pretrained(path, tp_plan="auto")`` after ``import motensor``: the
    quantizer shards the model as ``motensor.from_pretrained(path, tp_plan="auto")`` does (same
    slices read, same bytes held and read per rank) and transformers applies its plan no second
    time (the logits would then be wrong: shards cut twice, all-reduces run twice)."""
    results, paths = runs
    auto, own = results[f"transformers:{name}"], results[name]
    assert "error" not in auto, auto
    for a, m in zip(auto["ranks"], own["ranks"]):
        assert a["sliced_tensors"] == m["sliced_tensors"]
        assert a["held_bytes"] == m["held_bytes"]
        assert a["measured_read_bytes"] == a["planned_read_bytes"] == m["measured_read_bytes"]
    single = single_process(paths[name])
    ref, got = torch.tensor(single["logits"]), torch.tensor(auto["logits"])
    assert ref.shape == got.shape
    err, scale = (ref - got).abs().max().item(), ref.abs().max().item()
    assert err <= 1e-4 * scale + 1e-5, f"{name}: max |logit diff| {err:.3g} (logits up to {scale:.3g})"


def test_automodel_refusals(runs):
    """Through transformers too: a K that does not split into whole groups is the same
    FormatError; expert parallelism (``ep_size``) is refused, pointing to ``tp_plan="auto"``."""
    results, _ = runs
    r = results[f"transformers:{REFUSED}"]
    assert r.get("error") == "FormatError" and "multiple of 128" in r["message"], r
    r = results[f"transformers-ep:{EP}"]
    assert r.get("error") == "ArgumentError", r
    assert "expert parallelism" in r["message"] and 'tp_plan="auto"' in r["message"], r


def test_distributed_config_to_plan():
    """transformers' distributed arguments -> motensor's plan: TP over all ranks only."""
    from transformers.distributed import DistributedConfig

    model = _meta_model("qwen3moe-nvfp4")
    own = tp.model_plan(model, "auto")
    assert tp.plan_of_distributed_config(model, None) is None
    assert tp.plan_of_distributed_config(model, DistributedConfig(tp_size=1)) is None
    assert tp.plan_of_distributed_config(model, DistributedConfig(tp_size=2)) == "auto"
    assert tp.plan_of_distributed_config(model, DistributedConfig(tp_size=2, tp_plan="auto")) == "auto"
    override = {"model.layers.*.mlp.experts.down_proj": "rowwise"}
    merged = tp.plan_of_distributed_config(model, DistributedConfig(tp_size=2, tp_plan=override))
    assert merged == {**own, **override}
    for cfg, words in [(DistributedConfig(tp_size=2, ep_size=2), "expert parallelism"),
                       (DistributedConfig(tp_size=1, fsdp_size=2), "fsdp_size=2"),
                       (DistributedConfig(tp_size=2, tp_plan={}), "no tensor-parallel rule")]:
        with pytest.raises(motensor.errors.ArgumentError, match=words):
            tp.plan_of_distributed_config(model, cfg)


def test_expert_parallel_styles_are_refused():
    """A plan giving the experts transformers' EP styles (whole experts per rank) is refused,
    naming the container, instead of silently replicating the experts."""
    from motensor.models import naming

    model = _meta_model("qwen3moe-nvfp4")
    ck = motensor.open(DATA / "qwen3moe-nvfp4")
    ctx = tp.TPContext(mesh=None, rank=0, world=WORLD, device=torch.device("cpu"))
    plan = tp.model_plan(model, "auto")  # its keys name the experts' container and parameters, then EP's styles
    ep = {k: ("ep_dispatch_experts" if k.endswith(".experts") else "grouped_gemm") for k in plan if ".experts" in k}
    assert len(ep) == 3, plan
    plan.update(ep)
    with pytest.raises(motensor.errors.ArgumentError, match=r"model\.layers\.\d+\.mlp\.experts.*moe_tp_experts"):
        tp.plan_shards(model, ck, naming.renamer(model), ctx, plan)


def _meta_model(name: str):
    from motensor.models.pretrained import _build_on_meta, _config

    ck = motensor.open(DATA / name)
    config, arch = _config(ck, {}, True)
    return _build_on_meta(arch, config, torch.float32, None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_tp_over_nccl_matches_one_gpu(tmp_path):
    """The same check on GPUs (NCCL, Triton kernels on each rank's shard) against one GPU."""
    out = tmp_path / "out.json"
    path = str(DATA / "llama-nvfp4")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29499", "-m",
           "motensor.parallel.check", str(out), path, "--device", "cuda", "--transformers", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    results = json.loads(out.read_text())
    single = single_process(path, device="cuda")
    ref = torch.tensor(single["logits"])
    for key in (path, f"transformers:{path}"):  # motensor.from_pretrained, then AutoModelForCausalLM
        got = torch.tensor(results[key]["logits"])
        # Kernels tile K differently for the half-width shards: bound, not bit-exact.
        assert (ref - got).abs().max().item() <= 2e-3 * ref.abs().max().item() + 1e-4, key


@pytest.mark.parametrize("name", ["llama-w4a16_awq", "llama-nvfp4", "llama-fp8_pb_wo", "llama-mxfp8", "llama-w8a16",
                                  "qwen3moe-fp8"])
@pytest.mark.parametrize("kind", ["col", "row"])
def test_sliced_load_equals_slicing_the_whole_load(name, kind):
    """Every role of every module: the rank's slice, read and re-laid-out by the Rust fill, equals
    the matching slice of the whole tensor in kernel layout (INT4 re-packing and scale transposes
    included)."""
    path = DATA / name
    ck = motensor.open(path)
    whole = motensor.load(ck, "cpu", progress=False)
    for rank in range(WORLD):
        ctx = tp.TPContext(mesh=None, rank=rank, world=WORLD, device=torch.device("cpu"))
        shards = tp.ShardPlan(ctx=ctx)
        shapes = tp._ShapeLookup(ck)
        for info in ck.modules.values():
            try:
                tp._module_slices(info, kind, ctx, shapes, shards)
            except motensor.errors.FormatError:
                continue  # this split is refused (checked elsewhere)
        if not shards.slices:
            continue
        part = motensor.load(ck, "cpu", progress=False, slices=shards.slices)
        assert part.stats.read_bytes == part.stats.source_bytes < whole.stats.source_bytes
        # The CUDA path's batch loop (staging ring, batches cutting sliced tensors on their
        # row granules) fills the same bytes.
        staged = _load(ck, "cpu", dtype=None, modules=None, progress=False, chunk_bytes=4096, num_buffers=2,
                       staged=True, slices=shards.slices)
        a, b = staged.state_dict(), part.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        checked = 0
        for mname, lm in part.modules.items():
            for role, t in lm.tensors.items():
                full = whole.modules[mname].tensors[role]
                if lm.info.tensors[role] not in shards.slices:
                    assert torch.equal(t, full), (mname, role)
                    continue
                axes = [a for a in range(full.dim()) if full.shape[a] != t.shape[a]]
                assert len(axes) == 1, (mname, role, full.shape, t.shape)
                a = axes[0]
                n = t.shape[a]
                assert full.shape[a] == n * WORLD
                assert torch.equal(t, full.narrow(a, rank * n, n)), (name, mname, role, kind, rank)
                checked += 1
        assert checked


def test_slice_arguments_are_checked():
    ck = motensor.open(DATA / "llama-nvfp4")
    t = ck.modules["model.layers.0.self_attn.o_proj"].tensors["weight"]
    shape = ck.tensor_info(t).shape
    for bad in [(2, 0, 1), (0, 0, 0), (1, shape[1] - 1, 2)]:
        with pytest.raises(motensor.errors.ArgumentError):
            motensor.load(ck, "cpu", progress=False, slices={t: bad})
    with pytest.raises(motensor.errors.ArgumentError, match="does not read"):
        motensor.load(ck, "cpu", progress=False, modules="model.layers.1", slices={t: (0, 0, 1)})
    scalar = ck.modules["model.layers.0.self_attn.o_proj"].tensors["weight_scale_2"]
    with pytest.raises(motensor.errors.ArgumentError):
        motensor.load(ck, "cpu", progress=False, slices={scalar: (0, 0, 1)})
