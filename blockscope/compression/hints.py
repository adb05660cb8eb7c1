"""The spectra's number-format suggestion per matrix (a heuristic, docs/metrics.md "Quantisation
hints"): the band of its heavy-tail exponent picks a format, and the exported
quantization_config.json that users apply. Rule aggregate writes them; the experiments score them."""

import re

import numpy as np
import pandas as pd

from blockscope.compression.presets import overrides
from blockscope.layout import QUANTIZATION_HINT_COLUMNS

LOWER_MORE_BITS, HIGHER_MORE_BITS = "lower_alpha_more_bits", "higher_alpha_more_bits"
DIRECTION_WORDS = {LOWER_MORE_BITS: "lower", "alpha_pruning": "lower", HIGHER_MORE_BITS: "higher", "inverse": "higher"}
KEEP = "keep"  # the decision for a row without a usable spectrum: leave the tensor as stored


def quantization_hint(alpha: float, thresholds: list, formats: list, direction: str) -> str | None:
    """A number format for one matrix from its exponent (a heuristic, see docs/metrics.md);
    None for a non-finite exponent (no format is made up).

    The bands in alpha are [-inf, t0), [t0, t1), ..., [t_last, inf): a value exactly on a
    threshold joins the band above it, whatever the direction. lower_alpha_more_bits
    (AlphaPruning): the lowest band gets formats[0]; higher_alpha_more_bits: the highest does.
    thresholds ascending, formats from most to fewest bits, len(formats) == len(thresholds) + 1.
    """
    if not np.isfinite(alpha):
        return None
    band = int(np.searchsorted(thresholds, alpha, side="right"))
    return formats[band] if DIRECTION_WORDS[direction] == "lower" else formats[len(thresholds) - band]


def format_bits(name) -> int | None:
    """Bits of a format name: its first number (bf16 -> 16, fp8/int8 -> 8, int4 -> 4); None without one."""
    found = re.search(r"\d+", str(name)) if isinstance(name, str) else None
    return int(found.group()) if found else None


def quantization_bands(settings: dict) -> pd.DataFrame:
    """from (inclusive), to (exclusive) and format of every band, in alpha order (NaN: unbounded)."""
    thresholds, formats = settings["alpha_thresholds"], settings["formats"]
    edges, n = [np.nan, *thresholds, np.nan], len(thresholds)
    lower = DIRECTION_WORDS[settings["direction"]] == "lower"
    return pd.DataFrame([{"from": edges[i], "to": edges[i + 1], "format": formats[i] if lower else formats[n - i]}
                         for i in range(n + 1)], columns=["from", "to", "format"])


def quantization_basis(settings: dict) -> str:
    """The rule in words: preset, metric, direction, thresholds."""
    word = DIRECTION_WORDS[settings["direction"]]
    changed = overrides(settings)
    preset = settings.get("preset", "custom") + (f" (overridden: {', '.join(changed)})" if changed else "")
    return (f"preset {preset}: {settings['metric']} thresholds {settings['alpha_thresholds']}, "
            f"{word} {settings['metric']} keeps more bits")


def quantization_hints(metrics: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """One row per metrics row: a format where the row has a usable spectrum (status ok and a
    finite metric), else decision keep with the reason and no format."""
    table = metrics.reindex(columns=QUANTIZATION_HINT_COLUMNS[:9]).copy()
    status = metrics["status"] if "status" in metrics else pd.Series("ok", index=metrics.index)
    value = pd.to_numeric(metrics[settings["metric"]], errors="coerce")
    usable = (status == "ok") & np.isfinite(value)
    formats = [quantization_hint(v, settings["alpha_thresholds"], settings["formats"], settings["direction"])
               if ok else None for v, ok in zip(value, usable)]
    table["suggested_format"] = pd.Series(formats, index=table.index, dtype=object)
    table["bits"] = pd.array([format_bits(f) for f in formats], dtype="Int64")
    table["group_size"] = pd.array([settings.get("group_size", 32) if ok else None for ok in usable], dtype="Int64")
    table["decision"] = np.where(usable, "quantize", KEEP)
    table["reason"] = [("" if ok else str(s) if s != "ok" else f"{settings['metric']} is not finite")
                       for s, ok in zip(status, usable)]
    table["basis"] = quantization_basis(settings)
    return table


def _none(value):
    """JSON-ready: NaN and pandas NA become None, numpy scalars Python ones."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def quantization_parameters(hints: pd.DataFrame, metric: str) -> dict:
    """param_name -> entry {param_name, format, bits, group_size, metric, value, decision, reason};
    an expert stack's entry holds {param_name, experts: [entry with expert, ...]} instead."""
    out = {}
    for row in hints.itertuples(index=False):
        entry = {"param_name": row.param_name, "format": _none(row.suggested_format), "bits": _none(row.bits),
                 "group_size": _none(row.group_size), "metric": metric, "value": _none(getattr(row, metric)),
                 "decision": row.decision, "reason": row.reason}
        if pd.isna(row.expert):
            out[row.param_name] = entry
        else:
            stack = out.setdefault(row.param_name, {"param_name": row.param_name, "experts": []})
            stack["experts"].append({"expert": int(row.expert), **entry})
    return out


def quantization_config(model: str, hints: pd.DataFrame, settings: dict) -> dict:
    """The exported quantization_config.json (docs/outputs.md)."""
    bands = quantization_bands(settings)
    return {"model": model, "heuristic": True,
            "note": "Suggested number formats from heavy-tail exponents: a heuristic, not a guarantee. "
                    "Sources: AlphaPruning (Lu et al., NeurIPS 2024), WeightWatcher; see docs/metrics.md.",
            "preset": settings.get("preset", "custom"), "preset_overrides": overrides(settings),
            "rule": quantization_basis(settings) + "; a value on a threshold joins the band above it",
            "settings": settings, "group_size": settings.get("group_size", 32),
            "bands": [{k: _none(v) for k, v in band.items()} for band in bands.to_dict("records")],
            "keep": "decision keep, format null: no usable spectrum (status not ok, or the metric not finite); "
                    "leave the tensor as stored",
            "parameters": quantization_parameters(hints, settings["metric"]),
            "formats": {m: _none(f) for m, f in zip(hints["matrix"], hints["suggested_format"])}}
