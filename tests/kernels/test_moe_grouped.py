"""Grouped routed-experts kernels (kernels/moe_w4a16.py, moe_w8a16.py) vs the loop over experts.

Under the interpreter on a CPU machine, compiled on a GPU. Routings are chosen to hit the edges:
experts that receive no token, uneven counts (one expert takes most pairs), top-k 1, 2 and 3,
pairs routed to transformers' "no expert" slot (id E), the gate/up form (one x row per token,
shared by its slots) and the down form (one row per pair, routing weights applied), AWQ's
per-expert pre_quant_scale, K tails and several groups per K chunk.
"""
import zlib

import pytest
import torch

import motensor.ops  # noqa: F401  (registers torch.ops.motensor.*)
from kcases import DEVICE, assert_rel, gen, make_w4, make_x, tol
from motensor import dispatch
from motensor.kernels import reference as R

F16, F32 = torch.float16, torch.float32
CFG = lambda **kw: dict(dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=2), **kw)


def _stacked(E, n, k, el, sk, g, seed, device=DEVICE):
    ws = [make_w4(n, k, el, sk, g, seed + e, device=device) for e in range(E)]
    qw = torch.stack([w[0] for w in ws])
    sc = torch.stack([w[1] for w in ws])
    gs = None if ws[0][2] is None else torch.stack([w[2] * (1 + 0.25 * e) for e, w in enumerate(ws)])
    return qw, sc, gs


def _routing(kind: str, T: int, top_k: int, E: int, seed: int) -> torch.Tensor:
    g = gen(seed)
    if kind == "uneven":
        # Expert 0 takes most pairs, expert E-1 never appears; every row distinct experts.
        ids = torch.stack([torch.randperm(E - 1, generator=g)[:top_k] for _ in range(T)])
        ids[: (3 * T) // 4, 0] = 0
        ids[: (3 * T) // 4, 1:] = torch.where(ids[: (3 * T) // 4, 1:] == 0, 1, ids[: (3 * T) // 4, 1:])
        return ids
    if kind == "no_expert_slot":
        ids = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(T)])
        ids[::3, -1] = E            # transformers' "no expert" id: a zero row
        return ids
    return torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(T)])


# (element, scale_kind, G, E, N, K, T, top_k, routing, x rows per pair, dtype, pqs, config)
CASES = [
    ("E2M1", "E4M3", 16, 4, 40, 48, 5, 2, "uneven", False, F16, False, CFG()),               # K tail, chunk in group
    ("E2M1", "E4M3", 16, 4, 40, 96, 7, 2, "random", True, F32, False, CFG(BLOCK_K=64)),      # 4 groups per chunk
    ("E2M1", "E4M3", 16, 6, 24, 64, 3, 3, "no_expert_slot", True, F16, False, CFG(BLOCK_K=64)),
    ("E2M1", "E8M0", 32, 5, 40, 96, 9, 2, "uneven", True, F16, False, CFG(BLOCK_K=64)),      # fp32 prescale
    ("E2M1", "E8M0", 32, 3, 24, 64, 4, 1, "random", False, F32, False, CFG()),
    ("INT4", "F32", 32, 4, 40, 96, 6, 2, "uneven", False, F16, True, CFG()),                # AWQ + pre_quant_scale
    ("INT4", "F32", 64, 4, 24, 128, 17, 2, "random", True, F16, True, CFG(BLOCK_M=32, BLOCK_K=64)),
    ("INT4", "E4M3", 16, 3, 24, 48, 5, 2, "no_expert_slot", True, F32, False, CFG(BLOCK_K=64)),
]


def _id(c):
    el, sk, g, E, n, k, T, top_k, routing, per_pair, dt, pqs, _ = c
    return (f"{el}-{sk}-G{g}-E{E}-N{n}-K{k}-T{T}-top{top_k}-{routing}-{'pairs' if per_pair else 'tokens'}"
            f"-{str(dt)[6:]}{'-pqs' if pqs else ''}")


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_grouped_kernel_matches_loop_reference(case):
    from motensor.kernels import moe_w4a16

    el, sk, g, E, n, k, T, top_k, routing, per_pair, dtype, has_pqs, config = case
    seed = zlib.crc32(_id(case).encode())
    qw, sc, gs = _stacked(E, n, k, el, sk, g, seed)
    ids = _routing(routing, T, top_k, E, seed + 1).to(DEVICE)
    x = make_x((T * top_k if per_pair else T, k), dtype, seed + 2)
    tw = torch.rand(T, top_k, generator=gen(seed + 3)).to(DEVICE) if per_pair else None
    pqs = (torch.rand(E, k, generator=gen(seed + 4)) + 0.5).to(dtype).to(DEVICE) if has_pqs else None
    y = moe_w4a16.moe_w4a16_gemm(x, ids, tw, qw, sc, gs, element=el, scale_kind=sk, group_size=g,
                                 pre_quant_scale=pqs, config=config)
    cpu = lambda t: None if t is None else t.cpu()
    ref = R.moe_w4a16_gemm(x.cpu(), ids.cpu(), cpu(tw), qw.cpu(), sc.cpu(), cpu(gs), element=el, scale_kind=sk,
                           group_size=g, pre_quant_scale=cpu(pqs))
    assert y.shape == (T * top_k, n)
    # Rows of pairs routed to no expert are exactly zero (written by the kernel, not left over).
    dead = (ids.reshape(-1).cpu() >= E)
    assert torch.equal(y.cpu()[dead], torch.zeros_like(y.cpu()[dead]))
    assert_rel(y.cpu(), ref, tol(dtype))


@pytest.mark.parametrize("family", ["w4a16", "w8a16"])
def test_alignment_computed_once_is_reused_and_a_stale_one_replaced(family, monkeypatch):
    """``align`` sorts the pairs once for every projection of a forward: a kernel given that
    alignment does not sort again and gives the bits it gives without it; one built for another
    block size is not used (recomputed). (It must be built from the same ``topk_ids``: the op
    cannot check that without a host sync.)"""
    from motensor.kernels import moe_w4a16, moe_w8a16

    mod = moe_w4a16 if family == "w4a16" else moe_w8a16
    E, n, k, T, top_k = 4, 40, 64, 9, 2
    ids = _routing("uneven", T, top_k, E, 5).to(DEVICE)
    x = make_x((T, k), F16, 6)
    if family == "w4a16":
        qw, sc, gs = _stacked(E, n, k, "E2M1", "E4M3", 16, 7)
        run = lambda **kw: mod.moe_w4a16_gemm(x, ids, None, qw, sc, gs, element="E2M1", scale_kind="E4M3",
                                              group_size=16, config=CFG(), **kw)
    else:
        qw = (torch.randn(E, n, k, generator=gen(7)) * 0.5).to(torch.float8_e4m3fn).to(DEVICE)
        sc = (torch.rand(E, 1, 1, generator=gen(8)) + 0.5).to(DEVICE)
        run = lambda **kw: mod.moe_w8a16_gemm(x, ids, None, qw, sc, scale_kind="F32", block_size=128,
                                              config=CFG(), **kw)
    want = run()
    calls = []
    real = R.moe_align_block_size
    monkeypatch.setattr(R, "moe_align_block_size", lambda *a: calls.append(a[2]) or real(*a))
    al = R.moe_align_block_size(ids, E, CFG()["BLOCK_M"])
    calls.clear()
    assert torch.equal(run(alignment=al), want) and calls == []        # reused, no second sort
    assert torch.equal(run(alignment=real(ids, E, 32)), want) and calls == [16]  # other BLOCK_M: recomputed
    assert mod.block_m(T * top_k, E, ids.device) > 0


def test_loop_reference_is_the_per_expert_w4a16_gemm():
    """The reference itself: row p of the output is the plain W4A16 product of its token's row with
    its expert's weight (times its routing weight), independently of the expert loop."""
    E, n, k, T, top_k = 3, 24, 64, 5, 2
    qw, sc, gs = _stacked(E, n, k, "E2M1", "E4M3", 16, seed=5, device="cpu")
    ids = torch.tensor([[0, 2], [2, 0], [2, 1], [0, 2], [2, 0]])
    x = make_x((T, k), F32, seed=6, device="cpu")
    tw = torch.rand(T, top_k, generator=gen(7))
    y = R.moe_w4a16_gemm(x, ids, tw, qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16)
    for p in range(T * top_k):
        t, e = p // top_k, int(ids.reshape(-1)[p])
        want = R.w4a16_gemm(x[t : t + 1], qw[e], sc[e], gs[e], element="E2M1", scale_kind="E4M3", group_size=16)
        torch.testing.assert_close(y[p : p + 1], want * tw.reshape(-1)[p], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_align_block_size(block_m):
    """Every pair appears once; each block holds one expert's pairs (or sentinels); pairs routed
    outside [0, E) sit in blocks marked -1; the bound EM is static (no host sync)."""
    E, T, top_k = 5, 11, 3
    ids = _routing("no_expert_slot", T, top_k, E, seed=block_m)
    ids[0, 0] = -1                       # negative ids are "no expert" too
    sorted_ids, expert_ids = R.moe_align_block_size(ids, E, block_m)
    P = ids.numel()
    assert sorted_ids.dtype == torch.int32 and expert_ids.dtype == torch.int32
    assert sorted_ids.numel() % block_m == 0 and expert_ids.numel() == sorted_ids.numel() // block_m
    assert sorted_ids.numel() >= P + E * (block_m - 1)
    real = sorted_ids[sorted_ids < P]
    assert sorted(real.tolist()) == list(range(P))
    flat = ids.reshape(-1)
    for b in range(expert_ids.numel()):
        blk = sorted_ids[b * block_m : (b + 1) * block_m]
        blk = blk[blk < P].long()
        e = int(expert_ids[b])
        if e >= 0:
            assert blk.numel() > 0 and bool((flat[blk] == e).all()), (b, e, flat[blk])
        elif blk.numel():
            assert bool(((flat[blk] < 0) | (flat[blk] >= E)).all())
    # Within an expert the pairs keep their order (a stable sort).
    for e in range(E):
        run = [int(p) for p in real if int(flat[int(p)]) == e]
        assert run == sorted(run)


def test_op_cpu_is_the_reference_and_opcheck():
    ops = torch.ops.motensor
    qw, sc, gs = _stacked(3, 24, 64, "INT4", "F32", 32, seed=11, device="cpu")
    ids = torch.tensor([[0, 2], [2, 1], [1, 0]])
    x = make_x((3, 64), torch.bfloat16, seed=12, device="cpu")
    pqs = torch.rand(3, 64, generator=gen(13)).to(torch.bfloat16) + 0.5
    args = (x, ids, None, qw, sc, None, pqs, "INT4", "F32", 32)
    y = ops.moe_w4a16_gemm(*args)
    assert y.shape == (6, 24) and y.dtype == torch.bfloat16
    assert torch.equal(y, R.moe_w4a16_gemm(x, ids, None, qw, sc, None, element="INT4", scale_kind="F32",
                                           group_size=32, pre_quant_scale=pqs))
    assert str(ops.moe_w4a16_gemm.default._schema) == (
        "motensor::moe_w4a16_gemm(Tensor x, Tensor topk_ids, Tensor? topk_weights, Tensor qweight, Tensor scales, "
        "Tensor? global_scale, Tensor? pre_quant_scale, str element, str scale_kind, SymInt group_size, "
        "Tensor? sorted_ids=None, Tensor? expert_ids=None) -> Tensor")
    torch.library.opcheck(ops.moe_w4a16_gemm.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))
    q8, s8, g8 = _stacked(3, 24, 64, "E2M1", "E4M3", 16, seed=14, device="cpu")
    tw = torch.rand(3, 2, generator=gen(15))
    torch.library.opcheck(ops.moe_w4a16_gemm.default,
                          (make_x((6, 64), F32, seed=16, device="cpu"), ids, tw, q8, s8, g8, None, "E2M1", "E4M3", 16),
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))


def test_bad_shapes_are_clear_errors():
    from motensor.kernels import moe_w4a16

    qw, sc, gs = _stacked(2, 24, 64, "E2M1", "E4M3", 16, seed=17)
    ids = torch.tensor([[0, 1]]).to(DEVICE)
    with pytest.raises(ValueError, match=r"\[T, K\] or \[T\*top_k, K\]"):
        moe_w4a16.moe_w4a16_gemm(make_x((3, 64), F16, seed=1), ids, None, qw, sc, gs, element="E2M1",
                                 scale_kind="E4M3", group_size=16)
    with pytest.raises(ValueError, match="one value per expert"):
        moe_w4a16.moe_w4a16_gemm(make_x((1, 64), F16, seed=1), ids, None, qw, sc, gs[:1], element="E2M1",
                                 scale_kind="E4M3", group_size=16)


def test_dispatch_decides_grouped_on_cuda_reference_elsewhere(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    c = dispatch.choose("moe_w4a16", device="cuda", dtype=torch.bfloat16, M=16, capability=(9, 0))
    assert (c.name, c.backend, c.path, c.operand) == ("moe_w4a16_grouped_dot", "triton", "grouped", "bf16")
    assert dispatch.choose("moe_w4a16", device="cpu", dtype=torch.bfloat16, M=16).is_reference
    assert dispatch.choose("moe_w4a16", device="cuda", dtype=torch.bfloat16, M=16, capability=(7, 5)).is_reference
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.choose("moe_w4a16", device="cuda", dtype=F16, M=16, capability=(9, 0)).is_reference
    assert "moe_w4a16" in dispatch.describe()


@pytest.mark.gpu
def test_grouped_op_on_cuda_bf16_and_graph_capture():
    """bf16 through the compiled kernel (the interpreter cannot run bf16 dots), and no host sync:
    the op captures in a CUDA graph and replays on new routings."""
    E, n, k, T, top_k = 8, 256, 512, 33, 2
    qw, sc, gs = _stacked(E, n, k, "E2M1", "E4M3", 16, seed=21, device="cuda")
    ids = torch.randint(0, E, (T, top_k), device="cuda")
    x = torch.randn(T, k, device="cuda", dtype=torch.bfloat16)
    ops = torch.ops.motensor
    y = ops.moe_w4a16_gemm(x, ids, None, qw, sc, gs, None, "E2M1", "E4M3", 16)
    ref = R.moe_w4a16_gemm(x, ids, None, qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16)
    assert_rel(y, ref, tol(torch.bfloat16))
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        yg = ops.moe_w4a16_gemm(x, ids, None, qw, sc, gs, None, "E2M1", "E4M3", 16)
    ids.copy_(torch.randint(0, E, (T, top_k), device="cuda"))
    g.replay()
    ref2 = R.moe_w4a16_gemm(x, ids, None, qw, sc, gs, element="E2M1", scale_kind="E4M3", group_size=16)
    assert_rel(yg, ref2, tol(torch.bfloat16))


@pytest.mark.parametrize("algo,pqs", [("W4A16_NVFP4", False), ("W4A16_AWQ", True)])
def test_quant_experts_stacks_through_the_kernel_match_each_quantlinear(algo, pqs):
    """QuantExperts' stacked tensors, fed to the grouped kernel, give every pair's row what that
    expert's own QuantLinear computes for that token (the loop's building block)."""
    from motensor.kernels import moe_w4a16
    from motensor.models.moe import QuantExperts
    from motensor.nn import QuantLinear

    torch.manual_seed(3)
    E, H, inter, T, top_k = 4, 64, 32, 6, 2

    def mk(n, k):
        lin = torch.nn.Linear(k, n, bias=False)
        scale = torch.rand(k) + 0.5 if pqs else None
        return QuantLinear.from_float(lin, algo, group_size=32 if algo == "W4A16_AWQ" else None,
                                      pre_quant_scale=scale).to(DEVICE)

    q = QuantExperts([mk(inter, H) for _ in range(E)], [mk(inter, H) for _ in range(E)], [mk(H, inter) for _ in range(E)],
                     torch.nn.functional.silu, name="experts", mode="grouped")
    assert q._grouped_why_not is None
    ids = _routing("uneven", T, top_k, E, seed=4).to(DEVICE)
    x = make_x((T, H), F16, seed=5)
    st = q.grouped_tensors()
    for proj in ("gate", "up"):
        a = {k: v for k, v in st[proj].items() if not k.startswith("_")}
        y = moe_w4a16.moe_w4a16_gemm(x, ids, None, a.pop("qweight"), a.pop("scales"), a.pop("global_scale"), **a,
                                     config=CFG())
        mods = getattr(q, proj)
        want = torch.stack([mods[int(e)](x[p // top_k][None])[0] for p, e in enumerate(ids.reshape(-1))])
        assert_rel(y.cpu(), want.cpu(), 2 * tol(F16))


def test_nvfp4_fake_quant_per_row_scale_is_each_row_with_its_scale():
    """The grouped path quantizes each routed pair's row with its expert's input_scale: the op with
    one scale per row equals the scalar op row by row, bit for bit; other shapes are refused."""
    x = make_x((6, 64), torch.bfloat16, seed=41, device="cpu", scale=3.0)
    s = torch.tensor([0.01, 0.02, 0.005, 0.01, 0.04, 0.003])
    y = torch.ops.motensor.nvfp4_fake_quant(x, s)
    for r in range(6):
        assert torch.equal(y[r], torch.ops.motensor.nvfp4_fake_quant(x[r : r + 1], s[r])[0]), r
    assert not torch.equal(y, torch.ops.motensor.nvfp4_fake_quant(x, s[0]))
    with pytest.raises(ValueError, match="one per row"):
        R.nvfp4_fake_quant(x, s[:3])


# ----------------------------------------------------------------------------- FP8 experts (moe_w8a16)
def _stacked_w8(E, n, k, scale_kind, block, seed, device=DEVICE):
    g = gen(seed)
    qw = (torch.randn(E, n, k, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    if scale_kind == "F32":
        sc = torch.rand(E, -(-n // block), -(-k // block), generator=g) * 0.01 + 1e-4
    else:
        sc = torch.randint(118, 131, (E, k // block, n), generator=g, dtype=torch.uint8)
    return qw.to(device), sc.to(device)


# (scale_kind, block, E, N, K, T, top_k, routing, rows per pair, dtype, config)
W8_CASES = [
    ("F32", 128, 4, 40, 320, 5, 2, "uneven", False, F16, CFG()),                  # K tail in the last block
    ("F32", 128, 3, 136, 256, 7, 2, "no_expert_slot", True, F32, CFG(BLOCK_K=64)),  # 2 row blocks of scales
    ("E8M0", 32, 4, 40, 96, 6, 2, "uneven", True, F16, CFG()),                    # scale after the MMA
    ("E8M0", 32, 5, 24, 128, 9, 3, "random", False, F16, CFG(BLOCK_K=64)),         # scale folded per element
]


@pytest.mark.parametrize("case", W8_CASES, ids=lambda c: f"{c[0]}-N{c[3]}-K{c[4]}-top{c[6]}-{c[7]}-BK{c[10]['BLOCK_K']}")
def test_grouped_fp8_kernel_matches_loop_reference(case):
    from motensor.kernels import moe_w8a16

    sk, block, E, n, k, T, top_k, routing, per_pair, dtype, config = case
    seed = zlib.crc32(repr(case[:10]).encode())
    qw, sc = _stacked_w8(E, n, k, sk, block, seed)
    ids = _routing(routing, T, top_k, E, seed + 1).to(DEVICE)
    x = make_x((T * top_k if per_pair else T, k), dtype, seed + 2)
    tw = torch.rand(T, top_k, generator=gen(seed + 3)).to(DEVICE) if per_pair else None
    y = moe_w8a16.moe_w8a16_gemm(x, ids, tw, qw, sc, scale_kind=sk, block_size=block, config=config)
    cpu = lambda t: None if t is None else t.cpu()
    ref = R.moe_w8a16_gemm(x.cpu(), ids.cpu(), cpu(tw), qw.cpu(), sc.cpu(), scale_kind=sk, block_size=block)
    dead = ids.reshape(-1).cpu() >= E
    assert torch.equal(y.cpu()[dead], torch.zeros_like(y.cpu()[dead]))
    assert_rel(y.cpu(), ref, tol(dtype))


def test_fp8_op_cpu_reference_opcheck_and_dispatch(monkeypatch):
    ops = torch.ops.motensor
    qw, sc = _stacked_w8(3, 24, 64, "E8M0", 32, seed=51, device="cpu")
    ids = torch.tensor([[0, 2], [2, 1], [1, 0]])
    x = make_x((3, 64), torch.bfloat16, seed=52, device="cpu")
    tw = torch.rand(3, 2, generator=gen(53))
    y = ops.moe_w8a16_gemm(x, ids, tw, qw, sc, "E8M0", 32)
    assert torch.equal(y, R.moe_w8a16_gemm(x, ids, tw, qw, sc, scale_kind="E8M0", block_size=32))
    torch.library.opcheck(ops.moe_w8a16_gemm.default, (x, ids, tw, qw, sc, "E8M0", 32),
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    c = dispatch.choose("moe_w8a16", device="cuda", dtype=torch.bfloat16, M=8, capability=(9, 0))
    assert (c.name, c.backend, c.path) == ("moe_w8a16_grouped_dot", "triton", "grouped")


@pytest.mark.parametrize("algo", ["FP8_PB_WO", "MXFP8", "W4A16_NVFP4", "NVFP4"])
def test_quant_experts_grouped_equals_loop(algo, monkeypatch):
    """QuantExperts end to end, grouped vs loop, for each covered weight family and activation
    quantizer (none, MXFP8 per block, NVFP4 per pair with its expert's input_scale); on a CPU the
    grouped ops run their loop references, so what is checked is the stacking, the per-pair
    activation handling, the routing weights and the slot sum (bit for bit: they round alike, and
    with the loop's Linears on the same pure-torch reference, the same products on both sides)."""
    from motensor.models.moe import QuantExperts

    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")
    from motensor.nn import QuantLinear

    torch.manual_seed(7)
    E, H, inter, T, top_k = 4, 256, 128, 6, 2

    def mk(n, k):
        return QuantLinear.from_float(torch.nn.Linear(k, n, bias=False), algo,
                                      input_amax=3.0 + torch.rand(()).item() if algo == "NVFP4" else None)

    q = QuantExperts([mk(inter, H) for _ in range(E)], [mk(inter, H) for _ in range(E)],
                     [mk(H, inter) for _ in range(E)], torch.nn.functional.silu, name="experts", mode="loop")
    assert q._grouped_why_not is None
    ids = _routing("no_expert_slot", T, top_k, E, seed=8)
    x = (torch.randn(T, H) * 2).to(torch.bfloat16)
    tw = torch.rand(T, top_k).to(torch.bfloat16)
    with torch.no_grad():
        loop = q(x, ids, tw)
        q.mode = "grouped"
        grouped = q(x, ids, tw)
    assert grouped.dtype == loop.dtype and grouped.shape == loop.shape
    assert torch.equal(grouped, loop)


@pytest.mark.parametrize("algo", ["NVFP4", "MXFP8"])
def test_grouped_experts_compile_fullgraph(algo):
    """The grouped path traces into one graph (custom ops, static shapes, no pointer checks while
    tracing) and gives the eager grouped result, for two token counts (dynamic shapes)."""
    from motensor.models.moe import QuantExperts
    from motensor.nn import QuantLinear

    torch.manual_seed(9)
    mk = lambda n, k: QuantLinear.from_float(torch.nn.Linear(k, n, bias=False), algo,
                                             input_amax=3.0 if algo == "NVFP4" else None)
    E, H, inter = 3, 64, 64
    q = QuantExperts([mk(inter, H) for _ in range(E)], [mk(inter, H) for _ in range(E)],
                     [mk(H, inter) for _ in range(E)], torch.nn.functional.silu, name="experts", mode="grouped")
    q.grouped_tensors()  # built eagerly, as a first eager forward would
    compiled = torch.compile(q, backend="aot_eager", fullgraph=True)
    for T in (5, 9):
        x = torch.randn(T, H).to(torch.bfloat16)
        ids = _routing("random", T, 2, E, seed=T)
        tw = torch.rand(T, 2).to(torch.bfloat16)
        with torch.no_grad():
            assert torch.equal(compiled(x, ids, tw), q(x, ids, tw))


def test_grouped_rechecks_when_an_expert_module_is_replaced():
    """Replacing an expert's module (PEFT wraps it in a LoRA layer the same way) turns the grouped
    path off: it would skip the wrapper. Forcing it then names the module and the reason."""
    from motensor.errors import ArgumentError
    from motensor.models.moe import QuantExperts
    from motensor.nn import QuantLinear

    mk = lambda n, k: QuantLinear.from_float(torch.nn.Linear(k, n, bias=False), "W4A16_NVFP4")
    q = QuantExperts([mk(32, 64) for _ in range(3)], [mk(32, 64) for _ in range(3)], [mk(64, 32) for _ in range(3)],
                     torch.nn.functional.silu, name="layers.1.mlp.experts", mode="grouped")
    assert q._grouped_why_not is None
    q.grouped_tensors()
    wrapped = torch.nn.Sequential(q.up[2])
    setattr(q.up, "2", wrapped)                      # what PEFT's _replace_module does
    assert "up projections are not plain QuantLinears" in q._grouped_why_not
    with pytest.raises(ArgumentError, match="layers.1.mlp.experts"):
        q(torch.randn(2, 64), torch.tensor([[0, 2], [1, 2]]), torch.rand(2, 2))
    q.up[2] = wrapped[0]                             # put back: grouped again, stacks rebuilt
    assert q._grouped_why_not is None and q._stacks is None
    y = q(torch.randn(2, 64), torch.tensor([[0, 2], [1, 2]]), torch.rand(2, 2))
    assert y.shape == (2, 64)


@pytest.mark.parametrize("family", ["w4a16", "w8a16"])
def test_grouped_ops_backward_matches_autograd_through_dense_experts(family):
    """Input and routing-weight gradients of the grouped ops equal autograd through the dense
    dequantized expert weights (pair by pair, pre_quant_scale included; "no expert" pairs get none)."""
    E, n, k, T, top_k = 3, 24, 64, 5, 2
    ids = torch.tensor([[0, 2], [2, 1], [1, 0], [0, 3], [2, 0]])
    x = torch.randn(T, k, generator=gen(61)).requires_grad_()
    tw = torch.rand(T, top_k, generator=gen(62)).requires_grad_()
    if family == "w4a16":
        qw, sc, _ = _stacked(E, n, k, "INT4", "F32", 32, seed=63, device="cpu")
        pqs = torch.rand(E, k, generator=gen(64)) + 0.5
        y = torch.ops.motensor.moe_w4a16_gemm(x, ids, tw, qw, sc, None, pqs, "INT4", "F32", 32)
        W = torch.stack([R.dequant_w4(qw[e], sc[e], None, element="INT4", scale_kind="F32", group_size=32)
                         for e in range(E)])
    else:
        qw, sc = _stacked_w8(E, n, k, "E8M0", 32, seed=65, device="cpu")
        pqs = torch.ones(E, k)
        y = torch.ops.motensor.moe_w8a16_gemm(x, ids, tw, qw, sc, "E8M0", 32)
        W = torch.stack([R.dequant_w8(qw[e], sc[e], scale_kind="E8M0", block_size=32) for e in range(E)])
    g = torch.randn(y.shape, generator=gen(66))
    (y * g).sum().backward()
    x2, tw2 = x.detach().clone().requires_grad_(), tw.detach().clone().requires_grad_()
    rows = [(x2[p // top_k] * pqs[e]) @ W[e].t() * tw2.reshape(-1)[p] if e < E else torch.zeros(n)
            for p, e in enumerate(ids.reshape(-1).tolist())]
    (torch.stack(rows) * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tw.grad, tw2.grad, rtol=1e-5, atol=1e-5)
    assert x.grad.abs().sum() > 0 and tw.grad[3, 1] == 0     # the "no expert" slot: no gradient


@pytest.mark.parametrize("algo", ["NVFP4", "FP8_PB_WO"])
def test_quant_experts_sorts_the_pairs_once_per_forward(algo, monkeypatch):
    """One ``moe_align`` per forward, its result passed to the gate, up and down calls alike (the
    same tensors), and the output unchanged: the sort is shared, not redone per projection."""
    from motensor import ops
    from motensor.models.moe import QuantExperts
    from motensor.nn import QuantLinear

    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")
    torch.manual_seed(9)
    E, H, inter, T, top_k = 4, 256, 128, 5, 2
    mk = lambda n, k: QuantLinear.from_float(torch.nn.Linear(k, n, bias=False), algo,
                                             input_amax=4.0 if algo == "NVFP4" else None)
    q = QuantExperts([mk(inter, H) for _ in range(E)], [mk(inter, H) for _ in range(E)],
                     [mk(H, inter) for _ in range(E)], torch.nn.functional.silu, name="experts", mode="grouped")
    ids = _routing("uneven", T, top_k, E, seed=10)
    x = torch.randn(T, H).to(torch.bfloat16)
    tw = torch.rand(T, top_k).to(torch.bfloat16)
    with torch.no_grad():
        want = q(x, ids, tw)
    aligns, seen = [], []
    monkeypatch.setattr(ops, "moe_align", lambda i, n, fam: aligns.append(fam) or R.moe_align_block_size(i, n, 16))
    name = "moe_w8a16_gemm" if algo == "FP8_PB_WO" else "moe_w4a16_gemm"
    real = getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *a: seen.append((a[-2], a[-1])) or real(*a))
    with torch.no_grad():
        got = q(x, ids, tw)
    assert aligns == ["w8a16" if algo == "FP8_PB_WO" else "w4a16"]
    assert len(seen) == 3 and all(s is seen[0][0] and e is seen[0][1] for s, e in seen)
    assert seen[0][0] is not None
    assert torch.equal(got, want)
