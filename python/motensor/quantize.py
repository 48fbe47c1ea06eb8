"""Pure-torch quantizers that write ModelOpt's checkpoint layout (FORMATS.md section 4).

They are the inverse of the dequantization in the Rust core: ``quantize_weight(spec, W)`` returns
the tensors ModelOpt's ``export_hf_checkpoint`` would write for a Linear weight ``W`` (names by
role, checkpoint dtypes and shapes). Used by ``QuantLinear.from_float`` (users quantizing their
own layers), by the synthetic checkpoint writer of the benchmarks, and by tests.

Rounding follows ModelOpt: E2M1 round-to-nearest with ties to the even code
(``nvfp4._cast_fp4``), FP8 by torch's RNE cast, INT4/INT8 by ``torch.round`` (ties to even).
"""
from __future__ import annotations

import torch

from motensor.formats import FormatSpec, get_format
from motensor.kernels.reference import e2m1_codes, pack_4bit

E4M3_MAX = 448.0
E2M1_MAX = 6.0


def pack_int4_along_n(q: torch.Tensor) -> torch.Tensor:
    """Signed int4 values ``[*, N, K]`` -> ``[*, N/2, K]`` uint8, row 2r in the low nibble."""
    b = q.to(torch.int16) & 0xF
    return (b[..., 0::2, :] | (b[..., 1::2, :] << 4)).to(torch.uint8).contiguous()


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def _groups(w: torch.Tensor, g: int) -> torch.Tensor:
    if w.shape[-1] % g:
        raise ValueError(f"K={w.shape[-1]} is not a multiple of the group size {g}")
    return w.unflatten(-1, (-1, g))


def _nvfp4(w: torch.Tensor, g: int, ws2_divisor: float) -> dict[str, torch.Tensor]:
    amax = w.abs().amax().float()
    ws2 = amax / ws2_divisor
    blocks = _groups(w.float(), g)
    bamax = blocks.abs().amax(-1)
    # FORMATS 4.4: scale = e4m3(clamp(block_amax / (6 * ws2), 2^-9, 448)); all-zero blocks -> 1.
    per_block = torch.where(bamax == 0, torch.ones_like(bamax), bamax / (E2M1_MAX * ws2))
    scale = _e4m3(per_block.clamp(min=2.0**-9))
    denom = scale.float() * ws2
    codes = e2m1_codes(blocks / denom.unsqueeze(-1)).flatten(-2)
    return {"weight": pack_4bit(codes), "weight_scale": scale, "weight_scale_2": ws2.reshape(())}


def _mx_exponent(amax: torch.Tensor, element_max: float) -> torch.Tensor:
    """E8M0 exponent ``ceil(log2(amax / element_max))`` clamped to [-127, 127] (FORMATS 4.10)."""
    e = torch.ceil(torch.log2(amax.clamp(min=2.0**-127) / element_max))
    return e.clamp(-127, 127)


def _int4_groups(w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks = _groups(w.float(), g)
    scale = blocks.abs().amax(-1) / 7.0
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(blocks / safe.unsqueeze(-1)).clamp(-8, 7).flatten(-2)
    return q, scale


def quantize_weight(
    spec: FormatSpec | str,
    weight: torch.Tensor,
    *,
    group_size: int | None = None,
    input_amax: float | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Quantizes a ``[N, K]`` weight into the tensors ModelOpt exports for ``spec``.

    ``input_amax`` (the calibrated max of |x|) sets ``input_scale`` for static-activation
    formats; it is required there. Returns ``{role: tensor}`` in checkpoint layout.
    """
    spec = get_format(spec) if isinstance(spec, str) else spec
    w = weight.detach().float()
    if w.dim() != 2:
        raise ValueError(f"expected a [N, K] weight, got shape {tuple(weight.shape)}")
    g = group_size or spec.default_group
    out: dict[str, torch.Tensor]

    if spec.element == "e4m3" and spec.scale_shape == "scalar":
        s = w.abs().amax() / E4M3_MAX
        out = {"weight": (w / s).to(torch.float8_e4m3fn), "weight_scale": s.reshape(())}
    elif spec.element == "e4m3" and spec.scale_shape == "per_output":
        s = w.abs().amax(-1) / E4M3_MAX
        safe = torch.where(s == 0, torch.ones_like(s), s)
        out = {"weight": (w / safe[:, None]).to(torch.float8_e4m3fn), "weight_scale": s}
    elif spec.element == "e4m3" and spec.scale_shape == "blocks2d":
        n, k = w.shape
        nb, kb = -(-n // g), -(-k // g)
        padded = w.new_zeros(nb * g, kb * g)
        padded[:n, :k] = w
        s = padded.view(nb, g, kb, g).abs().amax(dim=(1, 3)) / E4M3_MAX
        s = torch.where(s == 0, torch.ones_like(s), s)
        full = s.repeat_interleave(g, 0)[:n].repeat_interleave(g, 1)[:, :k]
        out = {"weight": _e4m3(w / full), "weight_scale": s.view(nb, 1, kb, 1)}
    elif spec.element == "e4m3" and spec.scale_encoding == "e8m0":
        blocks = _groups(w, g)
        e = _mx_exponent(blocks.abs().amax(-1), E4M3_MAX)
        q = _e4m3(blocks * torch.exp2(-e).unsqueeze(-1)).flatten(-2)
        out = {"weight": q, "weight_scale": (e + 127).to(torch.uint8)}
    elif spec.element == "e2m1" and spec.scale_encoding == "e4m3":
        ws2_divisor = E4M3_MAX if spec.activation == "fp8_per_tensor" else E2M1_MAX * E4M3_MAX
        out = _nvfp4(w, g, ws2_divisor)
    elif spec.element == "e2m1" and spec.scale_encoding == "e8m0":
        blocks = _groups(w, g)
        e = _mx_exponent(blocks.abs().amax(-1), E2M1_MAX)
        codes = e2m1_codes(blocks * torch.exp2(-e).unsqueeze(-1)).flatten(-2)
        out = {"weight": pack_4bit(codes), "weight_scale": (e + 127).to(torch.uint8)}
    elif spec.element == "int4":
        q, s = _int4_groups(w, g)
        out = {"weight": pack_int4_along_n(q), "weight_scale": s}
        if spec.global_scale == "fp8_requant":
            deq = q * s.repeat_interleave(g, -1)
            out["weight_scale_2"] = (deq.abs().amax() / E4M3_MAX).reshape(())
    elif spec.element == "int8":
        s = w.abs().amax(-1) / 127.0
        safe = torch.where(s == 0, torch.ones_like(s), s)
        q = torch.round(w / safe[:, None]).clamp(-128, 127).to(torch.int8)
        out = {"weight": q, "weight_scale": s}
    else:  # pragma: no cover - the table has no other combination
        raise ValueError(f"no quantizer for {spec.name}")

    if spec.rule("input_scale") is not None and spec.rule("input_scale").required:
        if input_amax is None:
            raise ValueError(f"{spec.name} has static activation scales: pass input_amax")
        qmax = {"nvfp4": E2M1_MAX * E4M3_MAX, "int8_per_tensor": 127.0}.get(spec.activation, E4M3_MAX)
        out["input_scale"] = (torch.as_tensor(input_amax, dtype=torch.float32) / qmax).reshape(())
    return out
