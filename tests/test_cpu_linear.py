"""The prepared CPU layer (``motensor.kernels.cpu.linear_forward``, Rust ``CpuLinear``): a
decode-sized ``QuantLinear`` forward in one Rust call must give the op path's numbers bit for bit
(same quantizer, same fused kernel, same roundings), follow in-place and storage changes of the
module's tensors, and step aside wherever the op path must run (autograd, larger M, the torch
reference, formats without a prepared layer)."""
from __future__ import annotations

import copy

import pytest
import torch

from motensor import dispatch
from motensor.formats import all_formats
from motensor.kernels import cpu as cpu_kernels
from motensor.nn import QuantLinear
from motensor.recipes import recipe_for

K, N = 256, 160
PREPARED = sorted(n for n, f in all_formats().items() if recipe_for(f).cpu_linear is not None)
UNPREPARED = sorted(n for n, f in all_formats().items() if recipe_for(f).cpu_linear is None)


def _module(quant_algo: str, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(K, N, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(N, generator=g) * 0.1)
    spec = all_formats()[quant_algo]
    pqs = torch.rand(K, generator=g) + 0.5 if spec.rule("pre_quant_scale") is not None else None
    return QuantLinear.from_float(lin, quant_algo, input_amax=3.0, pre_quant_scale=pqs).eval()


def _op_path(m: QuantLinear, x: torch.Tensor, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as mp:
        mp.setattr(cpu_kernels, "linear_forward", lambda module, x: None)
        return m(x)


def _x(m_rows: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m_rows, K, generator=g) * 1.5
    x[0, :16] = 0.0  # an all-zero block / a row part with zero scale
    return x.to(dtype)


@pytest.mark.parametrize("quant_algo", PREPARED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("m_rows", [1, 3, dispatch.CPU_FUSED_MAX_M])
def test_prepared_layer_equals_the_op_path(quant_algo, dtype, m_rows, monkeypatch):
    m = _module(quant_algo)
    x = _x(m_rows, dtype)
    with torch.no_grad():
        got = m(x)
        assert m in cpu_kernels._PLANS and cpu_kernels._PLANS[m][1] is not None, "the prepared layer did not run"
        want = _op_path(m, x, monkeypatch)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == (m_rows, N)
    assert torch.equal(got.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       want.view(torch.int16 if dtype != torch.float32 else torch.int32)), \
        f"max diff {(got.float() - want.float()).abs().max()}"


@pytest.mark.parametrize("quant_algo", ["NVFP4", "W4A16_AWQ", "FP8"])
def test_prepared_layer_under_the_scalar_kernels(quant_algo, monkeypatch):
    m = _module(quant_algo)
    x = _x(2, torch.bfloat16)
    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "scalar")
    with torch.no_grad():
        got = m(x)
        want = _op_path(m, x, monkeypatch)
    assert torch.equal(got, want)


def test_leading_dims_and_non_contiguous_input(monkeypatch):
    m = _module("NVFP4")
    x = _x(6, torch.bfloat16).reshape(2, 3, K)
    xt = torch.cat([x, x], dim=-1)[..., ::2]  # strided
    with torch.no_grad():
        for inp in (x, xt):
            got = m(inp)
            assert got.shape == (2, 3, N)
            assert torch.equal(got, _op_path(m, inp, monkeypatch))


def test_follows_in_place_and_storage_changes(monkeypatch):
    m = _module("NVFP4")
    x = _x(1, torch.bfloat16)
    with torch.no_grad():
        before = m(x)
        plan = cpu_kernels._PLANS[m][1]
        m.bias.add_(1.0)  # in place: same storage, new version
        after = m(x)
        assert cpu_kernels._PLANS[m][1] is not plan
        assert torch.equal(after, _op_path(m, x, monkeypatch))
        assert not torch.equal(after, before)
        plan = cpu_kernels._PLANS[m][1]
        m.weight_scale_2.data = m.weight_scale_2.data * 2  # new storage
        doubled = m(x)
        assert cpu_kernels._PLANS[m][1] is not plan
        assert torch.equal(doubled, _op_path(m, x, monkeypatch))
        m.input_scale.mul_(4.0)
        coarser = m(x)
        assert torch.equal(coarser, _op_path(m, x, monkeypatch)) and not torch.equal(coarser, doubled)


def test_steps_aside_for_autograd_large_m_and_the_reference(monkeypatch):
    m = _module("NVFP4")
    calls = []
    real = cpu_kernels._core.CpuLinear

    class Counting:
        def __init__(self, *a):
            self.inner = real(*a)

        def forward(self, *a):
            calls.append(1)
            return self.inner.forward(*a)

    monkeypatch.setattr(cpu_kernels._core, "CpuLinear", Counting)
    x = _x(1, torch.float32).requires_grad_()
    y = m(x)  # grad enabled and x requires grad: the op path with its autograd
    y.sum().backward()
    assert x.grad is not None and not calls
    with torch.no_grad():
        m(_x(dispatch.CPU_FUSED_MAX_M + 1, torch.bfloat16))  # BLAS paths: op path
        assert not calls
        monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")
        m(_x(1, torch.bfloat16))
        assert not calls
        monkeypatch.delenv("MOTENSOR_CPU_KERNELS")
        m(_x(1, torch.bfloat16))
        assert calls


@pytest.mark.parametrize("quant_algo", UNPREPARED)
def test_formats_without_a_prepared_layer_run_the_ops(quant_algo):
    m = _module(quant_algo)
    with torch.no_grad():
        y = m(_x(1, torch.bfloat16))
    assert y.shape == (1, N) and torch.isfinite(y.float()).all()
    assert cpu_kernels._PLANS.get(m, (None, None))[1] is None


def test_deepcopy_and_repr():
    m = _module("W4A16_AWQ")
    with torch.no_grad():
        y = m(_x(1, torch.bfloat16))
    twin = copy.deepcopy(m)  # the prepared layer lives beside the module, not in it
    with torch.no_grad():
        assert torch.equal(twin(_x(1, torch.bfloat16)), y)
    r = repr(cpu_kernels._PLANS[m][1])
    assert "w4" in r and f"{N}x{K}" in r and "pre_quant_scale" in r and "bias" in r


def test_bad_arguments_raise_clear_errors():
    from motensor import _core
    from motensor.errors import ArgumentError

    m = _module("FP8")
    with torch.no_grad():
        m(_x(1, torch.bfloat16))
    plan = cpu_kernels._PLANS[m][1]
    x = _x(1, torch.bfloat16)
    with pytest.raises(ArgumentError, match="out must be torch.bfloat16"):
        plan.forward(x, torch.empty(1, N))
    with pytest.raises(ArgumentError, match="not a multiple of K"):
        plan.forward(torch.zeros(1, K + 1, dtype=torch.bfloat16), torch.empty(1, N, dtype=torch.bfloat16))
    with pytest.raises(ArgumentError, match="output"):
        plan.forward(x, torch.empty(2, N, dtype=torch.bfloat16))
    with pytest.raises(ArgumentError, match="float32, bfloat16 or float16"):
        plan.forward(x.double(), torch.empty(1, N, dtype=torch.float64))
    with pytest.raises(ArgumentError, match="overlaps"):
        buf = torch.zeros(2 * K, dtype=torch.bfloat16)
        plan.forward(buf[:K].view(1, K), buf[:N].view(1, N))
    with pytest.raises(ArgumentError, match="activation quantizer"):
        _core.CpuLinear("fp8", N, K, m.weight, None, "", "NONE", 0, None, None, "int3", None, None, None, None,
                        None, None)
    with pytest.raises(ArgumentError, match="bias"):
        _core.CpuLinear("fp8", N, K, m.weight, None, "", "NONE", 0, None, None, "none", None, None, None, None,
                        torch.zeros(N + 1), None)


_POOLS = """
    import sys, torch
    from motensor import _core
    from motensor.nn import QuantLinear
    torch.manual_seed(0)
    mods = [QuantLinear.from_float(torch.nn.Linear(1024, 768), f, input_amax=2.0).eval()
            for f in ("NVFP4", "W4A16_AWQ", "FP8")]
    x = torch.randn(3, 1024).to(torch.bfloat16)
    with torch.no_grad():
        out = b"".join(m(x).view(torch.int16).numpy().tobytes() for m in mods)
    sys.stdout.write(_core.cpu_pool() + " " + out.hex())
"""


def test_openmp_team_and_own_pool_give_the_same_numbers():
    """The parallel loops run on torch's OpenMP team (where the process has one; its size
    MOTENSOR_NUM_THREADS where set) or on motensor's pool (MOTENSOR_CPU_POOL=rayon): each piece of
    output is computed whole by one thread, so all agree bit for bit."""
    import os
    import subprocess
    import sys
    import textwrap

    runs = []
    for extra in ({"MOTENSOR_CPU_POOL": ""}, {"MOTENSOR_CPU_POOL": "rayon"}, {"MOTENSOR_NUM_THREADS": "1"}):
        env = {**os.environ, **extra}
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(_POOLS)], capture_output=True, text=True,
                           timeout=300, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(r.stdout.split())
    pools = [name for name, _ in runs]
    assert pools[1] == "motensor" and pools[0] == pools[2]  # "openmp" where torch has OpenMP
    assert len({out for _, out in runs}) == 1  # one thread, the team, the own pool: same bits


@pytest.mark.parametrize("quant_algo", ["FP8", "FP8_PER_CHANNEL_PER_TOKEN"])
def test_fp8_products_above_16_rows(quant_algo, monkeypatch):
    """FP8 x FP8 on a CPU with bf16 dot products: the fused kernel (fp32 sums before the scale
    epilogue) up to dispatch.CPU_FP8_FUSED_MAX_M rows, through the prepared layer as well; the same
    numbers as the op path."""
    m = _module(quant_algo)
    x = _x(40, torch.bfloat16)
    path = dispatch.cpu_path("fp8_linear", torch.bfloat16, 40)
    assert path == ("fused" if dispatch.cpu_isa() == dispatch.CPU_BF16_ISA else "dequant_blas")
    with torch.no_grad():
        got = m(x)
        want = _op_path(m, x, monkeypatch)
    assert (cpu_kernels._PLANS.get(m, (None, None))[1] is not None) == (path == "fused")
    assert torch.equal(got, want)
    monkeypatch.setenv("MOTENSOR_CPU_KERNELS", "reference")
    with torch.no_grad():
        exact = m(x)
    # The fused kernel and the torch reference differ in the order of fp32 sums only.
    assert (got.float() - exact.float()).abs().max() <= 2.0 ** -6 * exact.float().abs().max()


def test_modules_made_under_inference_mode(monkeypatch):
    """Inference tensors have no version counter (in-place changes could not be seen): such a
    module runs the op path, with the same numbers."""
    with torch.inference_mode():
        m = _module("NVFP4")
        x = _x(1, torch.bfloat16)
        y = m(x)
        assert cpu_kernels._PLANS.get(m) is None
        assert torch.equal(y, _op_path(m, x, monkeypatch))


def test_concurrent_callers_share_a_prepared_layer():
    """The prepared layer releases the GIL while it computes: callers on several threads get the
    single-threaded result."""
    import threading

    m = _module("W4A16_AWQ")
    xs = [_x(2, torch.bfloat16, seed=s) for s in range(8)]
    with torch.no_grad():
        want = [m(x) for x in xs]
    got: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(20):
                got[i] = m(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(got[i], want[i]) for i in range(len(xs)))
