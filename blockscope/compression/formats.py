"""Simulated round-to-nearest (RTN) quantisation: each format's round trip and its bits per weight.

A weight matrix W is (out, in) as nn.Linear stores it; per-channel scales are per output row,
groups run along the input dimension (the last axis). Scales and zero points are stored as
fp16 (16 bits), the integer zero point of int4 as 4 bits, as GPTQ / AutoGPTQ pack them; the
round trip rounds the scale to fp16 too, so the simulation is what such a file would hold.
No heavy import at module level: config validation reads FORMATS.
"""

import math

# Formats a plan may assign (config key compress.quant.formats), most bits first.
FORMATS = ("bf16", "fp16", "fp8-e4m3", "int8", "int4", "int3")
SCALE_BITS = 16  # one fp16 scale (or float minimum) per channel or group
INT4_ZERO_BITS = 4  # int4's integer zero point, packed like the weights
INT3_ZERO_BITS = 3  # int3's, likewise
FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX, INT4_LEVELS, INT3_LEVELS = 127, 15, 7


def _fp16_scale(scale):
    """Scales as stored (fp16); an all-zero channel or group gets scale 1 (it stays zero)."""
    import torch

    scale = scale.to(torch.float16).float()
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def cast_round_trip(w, dtype_name: str):
    """bf16 / fp16: cast and back (round to nearest even)."""
    import torch

    return w.to(getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[dtype_name])).to(w.dtype)


def fp8_e4m3_round_trip(w):
    """fp8-e4m3 with one scale per output channel: s = max|w_row| / 448, w ~ s * fp8(w / s)."""
    import torch

    scale = _fp16_scale(w.abs().amax(dim=-1, keepdim=True).float() / FP8_E4M3_MAX)
    # clamp first: float8_e4m3fn has no infinity, a value past 448 (fp16 rounding of s) would cast to NaN
    scaled = (w.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    return (scaled.to(torch.float8_e4m3fn).float() * scale).to(w.dtype)


def int8_round_trip(w):
    """Symmetric int8 per output channel: s = max|w_row| / 127, q = clamp(round(w / s), -127, 127)."""
    scale = _fp16_scale(w.abs().amax(dim=-1, keepdim=True).float() / INT8_MAX)
    return ((w.float() / scale).round().clamp(-INT8_MAX, INT8_MAX) * scale).to(w.dtype)


def _asymmetric_groups(g, levels: int = INT4_LEVELS):
    """Round trip of (..., groups, size): the range [min(x, 0), max(x, 0)] onto 0..levels (int4: 15)
    with an integer zero point (GPTQ's quantizer: zero stays exactly representable)."""
    low = g.amin(dim=-1, keepdim=True).clamp(max=0)
    high = g.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = _fp16_scale((high - low) / levels)
    zero = (-low / scale).round().clamp(0, levels)
    return ((g / scale).round().add(zero).clamp(0, levels) - zero) * scale


def int4_round_trip(w, group_size: int):
    """Asymmetric int4, one fp16 scale and a 4-bit zero point per group of group_size input columns."""
    return grouped_round_trip(w, group_size, INT4_LEVELS)


def int3_round_trip(w, group_size: int):
    """Asymmetric int3 (8 levels, 0..7), one fp16 scale and a 3-bit zero point per group: the harsher
    format the per-matrix sensitivity measures beside int4."""
    return grouped_round_trip(w, group_size, INT3_LEVELS)


def grouped_round_trip(w, group_size: int, levels: int):
    """Asymmetric integer groups of group_size input columns onto 0..levels. When group_size does
    not divide the input size, the last group of each row is partial: it holds the remaining
    in % group_size columns and has its own scale and zero point (no padding values enter any range)."""
    import torch

    x = w.float()
    cols = x.shape[-1]
    full = cols - cols % group_size
    parts = []
    if full:
        head = x[..., :full].reshape(*x.shape[:-1], full // group_size, group_size)
        parts.append(_asymmetric_groups(head, levels).reshape(*x.shape[:-1], full))
    if full < cols:
        parts.append(_asymmetric_groups(x[..., full:].unsqueeze(-2), levels).squeeze(-2))
    return torch.cat(parts, dim=-1).to(w.dtype)


def quantize(w, fmt: str, group_size: int = 32):
    """W after a round trip through `fmt` (a simulated RTN quantisation, same dtype and shape)."""
    if fmt in ("bf16", "fp16"):
        return cast_round_trip(w, fmt)
    if fmt == "fp8-e4m3":
        return fp8_e4m3_round_trip(w)
    if fmt == "int8":
        return int8_round_trip(w)
    if fmt == "int4":
        return int4_round_trip(w, group_size)
    if fmt == "int3":
        return int3_round_trip(w, group_size)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def bits_per_weight(fmt: str, cols: int, group_size: int = 32) -> float:
    """Stored bits per weight of a matrix with `cols` input columns, scales and zero points included:
    bf16 / fp16 16; fp8-e4m3 and int8 8 + 16 / cols (one fp16 scale per row); int4
    4 + ceil(cols / group_size) * (16 + 4) / cols (a scale and a zero point per group); int3
    3 + ceil(cols / group_size) * (16 + 3) / cols."""
    if fmt in ("bf16", "fp16"):
        return 16.0
    if fmt in ("fp8-e4m3", "int8"):
        return 8.0 + SCALE_BITS / cols
    if fmt == "int4":
        return 4.0 + math.ceil(cols / group_size) * (SCALE_BITS + INT4_ZERO_BITS) / cols
    if fmt == "int3":
        return 3.0 + math.ceil(cols / group_size) * (SCALE_BITS + INT3_ZERO_BITS) / cols
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# The hint rules' format names (blockscope.compression.presets presets) as formats of this module:
# a pair like "fp8/int8" is simulated as its first member.
HINT_ALIASES = {"fp8": "fp8-e4m3"}


def hint_format(name: str) -> str:
    """The simulated format of a hint name: bf16 -> bf16, fp8/int8 -> fp8-e4m3, fp16/bf16 -> fp16."""
    first = str(name).split("/")[0].strip().lower()
    fmt = HINT_ALIASES.get(first, first)
    if fmt not in FORMATS:
        raise ValueError(f"hint format {name!r} has no simulated format; one of {', '.join(FORMATS)}")
    return fmt
