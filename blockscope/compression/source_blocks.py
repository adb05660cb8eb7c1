"""GGUF sources: the block structure a dequantised GGUF checkpoint keeps, the int4 group that does
not line up with it, and what such a source does to each answer (docs/metrics.md "A GGUF source").

A GGUF quant type stores each row of a Linear weight (its input dimension, ggml's ne0) in blocks
of consecutive inputs, each with its own scale (and minimum). Dequantised, a block of Q4_1 holds
at most 16 levels d * q + m. Asymmetric int4 over a group of exactly that block (its values
straddling 0, as nearly all do) finds the same step d (the block's extremes are codes 0 and 15)
and keeps every level; only its integer zero point moves the block by one constant offset, which
is the size of Q4_1's own rounding.
"""

import math
from collections.abc import Mapping

# Values per block along the input dimension (ggml's block structs; gguf-py 0.19.0
# gguf/constants.py GGML_QUANT_SIZES): 32, or the K-quants' super-block of QK_K = 256.
SOURCE_BLOCK_SIZES = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32, "Q8_1": 32, "IQ4_NL": 32,
                      "MXFP4": 32, "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "Q8_K": 256,
                      "IQ4_XS": 256}
# Values sharing one scale (and minimum): the K-quants' sub-blocks (gguf-py gguf/quants.py,
# dequantize_blocks: Q2_K, Q3_K and Q6_K scale each 16 values, Q4_K, Q5_K and IQ4_XS each 32).
SUB_BLOCK_SIZES = {**SOURCE_BLOCK_SIZES, "Q2_K": 16, "Q3_K": 16, "Q4_K": 32, "Q5_K": 32, "Q6_K": 16, "IQ4_XS": 32}
# Levels per sub-block on a uniform grid (codebook types, IQ4_* and MXFP4, have none).
SOURCE_LEVELS = {"Q4_0": 16, "Q4_1": 16, "Q5_0": 32, "Q5_1": 32, "Q8_0": 256, "Q8_1": 256, "Q2_K": 4, "Q3_K": 8,
                 "Q4_K": 16, "Q5_K": 32, "Q6_K": 64, "Q8_K": 256}
# Stored bits per weight, scales included (GGML_QUANT_SIZES: bytes per block x 8 / block size).
SOURCE_BITS = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "Q8_1": 10.0, "IQ4_NL": 4.5,
               "MXFP4": 4.25, "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "Q8_K": 9.125,
               "IQ4_XS": 4.25}

INT4_STEPS = 15               # int4's 16 levels: 15 steps
STANDARD_GROUPS = (64, 128)   # int4 group sizes in common use (GPTQ, AWQ) above the GGUF block
# A group keeps "too many" source blocks above this share: 1/16 is a group of 4 blocks
# (kept_block_share(32, 128)); a group of 2 blocks keeps a quarter of them.
MAX_KEPT_SHARE = 1 / 16
WIDER_FORMATS = (("fp8", 8), ("int8", 8), ("bf16/fp16", 16))  # the experiments' formats above int4, by width


def gguf_types(source_dtypes) -> list:
    """The GGUF quant types among source dtypes (a list of names, or a mapping name -> dtype)."""
    names = source_dtypes.values() if isinstance(source_dtypes, Mapping) else source_dtypes
    return sorted({str(n).upper() for n in names if isinstance(n, str) and str(n).upper() in SOURCE_BLOCK_SIZES})


def source_block_size(source_dtypes) -> int | None:
    """Values sharing one scale along the input dimension (a K-quant's sub-block) for the GGUF types
    present; where they differ, the largest (16 and 32 both divide it). None without a GGUF type."""
    sizes = [SUB_BLOCK_SIZES[t] for t in gguf_types(source_dtypes)]
    return max(sizes) if sizes else None


def int4_keeps_levels(quant_type: str) -> bool:
    """Whether int4 can hold a block's levels: a uniform grid whose steps divide int4's 15 (16, 6, 4
    or 2 levels: Q4_0, Q4_1, Q4_K, Q2_K), up to the fp16 rounding of a K-quant's product scale."""
    levels = SOURCE_LEVELS.get(str(quant_type).upper())
    return levels is not None and INT4_STEPS % (levels - 1) == 0


def kept_block_share(block: int, group: int) -> float:
    """Expected share of the smaller pieces (source blocks, or int4 groups when smaller) whose levels
    int4 keeps: a piece must lie wholly inside one piece of the other size (both start at input 0),
    and hold both extremes of it, which it does with probability about (small / large)^2 (measured
    on Q4_1 blocks of 32: 0.25 at group 64, 0.06 at 128; below the block a lower bound, as a block's
    extreme codes often repeat: 0.30 at group 16; tests/test_definitions.py)."""
    small, large = sorted((block, group))
    period = math.lcm(small, large)
    inside = sum((start // large) == ((start + small - 1) // large) for start in range(0, period, small))
    return inside / (period // small) * (small / large) ** 2


def _share(x: float) -> str:
    return "all" if x >= 0.995 else f"about {x:.0%}"


def int4_group_for(source_dtypes, group_size: int) -> tuple:
    """(group, reason): int4's group size on this source. When the configured group keeps more than
    MAX_KEPT_SHARE of the source's blocks (a Q4_1 source at group 32 keeps all of them), the
    smallest of STANDARD_GROUPS that does not; reason is one sentence for the report ('' when no
    GGUF type int4 could reproduce is present)."""
    kept = [t for t in gguf_types(source_dtypes) if int4_keeps_levels(t)]
    if not kept:
        return group_size, ""
    block = max(SUB_BLOCK_SIZES[t] for t in kept)

    def share(group):
        return max(kept_block_share(SUB_BLOCK_SIZES[t], group) for t in kept)

    names = ", ".join(kept)
    if share(group_size) <= MAX_KEPT_SHARE:
        return group_size, (f"int4 keeps its configured group of {group_size} inputs: it keeps the levels of "
                            f"{_share(share(group_size))} of the {names} source's blocks of {block}.")
    group = next((g for g in STANDARD_GROUPS if share(g) <= MAX_KEPT_SHARE), STANDARD_GROUPS[-1])
    return group, (f"int4 uses groups of {group} inputs, not the configured {group_size}: at {group_size} it would "
                   f"keep the levels of {_share(share(group_size))} of the {names} source's blocks of {block} and move "
                   f"each only by its zero point's rounding, so its error would measure that rounding rather than a "
                   f"4-bit format's loss; at {group} it keeps {_share(share(group))}.")


def source_effects(source_dtypes) -> list:
    """Sentences saying what a GGUF source does to each answer (quantisation plans, int4's group,
    pruning, spectra); [] for a source without a GGUF quant type. Pass the planned matrices'
    source dtypes: with several types, the sentences bound them (the most levels, the most bits)."""
    types = gguf_types(source_dtypes)
    if not types:
        return []
    names, block = ", ".join(types), source_block_size(source_dtypes)
    bits = max(SOURCE_BITS[t] for t in types)
    levels = [SOURCE_LEVELS[t] for t in types if t in SOURCE_LEVELS]
    grid = f"at most {max(levels)} levels" if levels else "a codebook of levels"
    out = [f"The matrices are dequantised {names}: each block of {block} inputs holds {grid} and the source stores "
           f"{bits:g} bits per weight, so a plan's loss is measured against an already quantised model, and no "
           f"format can restore what the source rounded away."]
    wider = [name for name, width in WIDER_FORMATS if width > bits]
    if wider:
        out.append(f"Formats wider than the source's {bits:g} bits ({', '.join(wider)}) only re-round its grid: "
                   f"their differences from the base are small against the source's own rounding and say little "
                   f"about what those formats would cost on the original weights.")
    kept = [t for t in types if int4_keeps_levels(t)]
    if kept:
        size = max(SUB_BLOCK_SIZES[t] for t in kept)
        group = next(g for g in STANDARD_GROUPS if max(kept_block_share(SUB_BLOCK_SIZES[t], g)
                                                       for t in kept) <= MAX_KEPT_SHARE)
        out.append(f"int4 with groups of exactly {size} inputs keeps the {', '.join(kept)} levels and moves each "
                   f"block by one constant offset, an error the size of the source's own rounding, not a 4-bit "
                   f"format's loss; with groups of {group} inputs or more, few blocks keep their levels.")
    out.append(f"Magnitude pruning meets many tied magnitudes (each block holds {grid}, and blocks share fp16 "
               f"scales and minima, so values recur across a matrix): which of the weights tied at the threshold "
               f"are pruned is decided by their position.")
    out.append("Spectra describe the dequantised weights: alpha, alpha-Hill and alpha-mid read the tail and move "
               "little under the source's rounding, while alpha-peak, fitted from the ESD's peak where the rounding "
               "noise lies, can move by about a unit (a Q4_1 round trip of synthetic heavy-tailed matrices, "
               "docs/metrics.md); by default alpha-peak drives the pruning allocation.")
    return out
