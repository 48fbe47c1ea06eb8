"""The pure-torch references vs independent transcriptions of FORMATS.md (§2, §4.7, §8).

The kernels are tested against kernels/reference.py; these tests keep that reference honest
by comparing it with the spec's own pseudo-code and ModelOpt's algorithms, written out here.
"""
import torch

from motensor import layout

from kcases import gen
from motensor.kernels import reference as R

E2M1 = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])


def spec_unpack_fp4(p):                       # FORMATS §8
    return E2M1[torch.stack([p & 0xF, p >> 4], -1).long()].flatten(-2)


def spec_nvfp4(w, ws, ws2, g=16):             # FORMATS §8, ws [N, K/g] as in the checkpoint
    q = spec_unpack_fp4(w)
    sc = ws.float() * ws2.float()
    return (q.unflatten(-1, (-1, g)) * sc[..., None]).flatten(-2)


def spec_int4_awq(w, ws, g):                  # FORMATS §8, ModelOpt layout [N/2, K]
    b = w.view(torch.uint8).to(torch.int16)
    lo, hi = b & 0xF, b >> 4
    q = torch.stack([lo, hi], 1).reshape(-1, w.shape[-1])
    q = torch.where(q >= 8, q - 16, q).float()
    return q * ws.float().repeat_interleave(g, 1)[:, :q.shape[1]]


def test_nvfp4_dequant_matches_spec():
    g = gen(1)
    w = torch.randint(0, 256, (24, 32), generator=g, dtype=torch.uint8)     # [N, K/2]
    ws = (torch.rand(24, 4, generator=g) * 8).to(torch.float8_e4m3fn)       # checkpoint [N, K/16]
    ws2 = torch.tensor(0.003)
    ours = R.dequant_w4(w, ws.t().contiguous(), ws2, element="E2M1", scale_kind="E4M3", group_size=16)
    assert torch.equal(ours, spec_nvfp4(w, ws, ws2))


def test_awq_layout_conversion_matches_spec():
    """ModelOpt W4A16_AWQ (signed nibbles packed along N) -> kernel layout, same dequantized W."""
    g = gen(2)
    n, k, gsz = 16, 64, 32
    q = torch.randint(-8, 8, (n, k), generator=g)
    packed = ((q[0::2] & 0xF) | ((q[1::2] & 0xF) << 4)).to(torch.uint8)     # MO pack_int4_in_uint8
    ws = torch.rand(n, k // gsz, generator=g) + 0.1                           # [N, K/G]
    qw, sc = layout.int4_to_k_packed(packed), layout.transpose_groups(ws)
    assert qw.shape == (n, k // 2) and sc.shape == (k // gsz, n)
    ours = R.dequant_w4(qw, sc, element="INT4", scale_kind="F32", group_size=gsz)
    assert torch.equal(ours, spec_int4_awq(packed, ws, gsz))
    assert torch.equal(ours, q.float() * ws.repeat_interleave(gsz, 1))
    # int8-typed checkpoints (MO 0.23) carry the same bits
    qw8 = layout.int4_to_k_packed(packed.view(torch.int8))
    assert torch.equal(qw8, qw)


def test_mx_and_fp8_block_dequant_match_spec():
    g = gen(3)
    w = (torch.randn(40, 96, generator=g) * 10).to(torch.float8_e4m3fn)
    e = torch.randint(110, 140, (40, 3), generator=g, dtype=torch.uint8)      # checkpoint [N, K/32]
    spec = (w.float().unflatten(-1, (-1, 32)) * torch.exp2(e.float() - 127)[..., None]).flatten(-2)
    assert torch.equal(R.dequant_mxfp8(w, e.t().contiguous()), spec)
    s4 = torch.rand(2, 1, 2, 1, generator=g)                                  # [N/128, 1, K/128, 1] for 200 x 160
    w2 = (torch.randn(200, 160, generator=g)).to(torch.float8_e4m3fn)
    want = w2.float().clone()
    for i in range(2):
        for j in range(2):
            want[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= s4[i, 0, j, 0]
    assert torch.equal(R.dequant_fp8_block(w2, s4), want)


def mo_cast_fp4(x):
    """ModelOpt nvfp4._cast_fp4 (searchsorted on the bounds, +1 on odd-index ties) -> value."""
    bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    a = x.abs()
    ordinal = torch.searchsorted(bounds, a)
    tie_up = ((a[..., None] == bounds) * torch.tensor([0, 1, 0, 1, 0, 1, 0])).any(-1)
    code = ordinal + tie_up.long()
    mag = E2M1[:8][code.clamp(max=7)]
    return torch.where(x < 0, -mag, mag)


def test_e2m1_rounding_matches_modelopt():
    x = torch.cat([torch.linspace(-7, 7, 2001), torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]),
                   -torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])])
    assert torch.equal(R.round_e2m1(x), mo_cast_fp4(x))


def test_ceil_log2_is_exact():
    g = gen(4)
    r = torch.cat([torch.rand(1000, generator=g) * torch.logspace(-45, 38, 1000),
                   torch.exp2(torch.arange(-149.0, 128.0)), torch.tensor([0.0])]).float()
    e = R.ceil_log2_clamped(r).double()
    rd = r.double()
    pos = rd > 0
    # 2^(e-1) < r <= 2^e wherever e is not clamped
    free = pos & (e > -127) & (e < 127)
    assert (torch.exp2(e[free] - 1) < rd[free]).all() and (rd[free] <= torch.exp2(e[free])).all()
    assert (e[~pos] == -127).all()
    assert (e[pos & (rd <= 2.0 ** -127)] == -127).all()
