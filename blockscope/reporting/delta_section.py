"""A model against another in the report: a fine-tune (or an adapter) against its base, what
moved, where, how much and how low-rank the update is; a compare pair, how far apart the two are
and whether their top singular subspaces agree. Findings are descriptive (which layer moved most
is a ranking of measured numbers, not a test), so they name no winner. Reads the tables of rules
delta_tables and compare_tables (blockscope.aggregation.delta_tables); nothing here measures a matrix."""

import os

import numpy as np
import pandas as pd

from blockscope.aggregation.delta_tables import (
    changed,
    compared,
    delta_by_type,
    delta_group,
    distance_group,
    numbers,
)
from blockscope.layout import ALL_TYPES, MODEL_RESULTS, SUMMARY
from blockscope.pair_layout import (
    COMPARE,
    COMPARE_BY_LAYER,
    COMPARE_DISTANCES_CSV,
    DELTA_BELOW_ROUNDING,
    DELTA_CHANGED,
    DELTA_NO_TAIL,
    DELTA_UNCHANGED,
    DELTAS_BY_LAYER,
    DELTAS_CSV,
    MISSING_IN_OTHER,
    SHAPES_DIFFER,
)
from blockscope.reporting.markdown import has

# The tables findings link to, by file name, relative to a model's results folder or a compare pair's.
DELTAS_FILE, DELTAS_BY_LAYER_FILE = (os.path.relpath(path, MODEL_RESULTS) for path in (DELTAS_CSV, DELTAS_BY_LAYER))
DISTANCES_FILE, COMPARE_BY_LAYER_FILE = (os.path.relpath(path, COMPARE)
                                         for path in (COMPARE_DISTANCES_CSV, COMPARE_BY_LAYER))
TOP_LAYERS = 3  # layers a finding names as the ones that moved (or differ) most
LISTED_TYPES = 8  # block types a finding lists with their numbers


def number(value) -> str:
    """A relative change or distance in a sentence: 3 significant digits (1.23e-05 for tiny ones)."""
    return "NaN" if value is None or pd.isna(value) else f"{float(value):.3g}"


def plural(count: int, word: str) -> str:
    """"1 matrix", "3 matrices": a count and its noun."""
    many = word[:-len("matrix")] + "matrices" if word.endswith("matrix") else word + "s"
    return f"{count} {word if count == 1 else many}"


def md_link(target: str) -> str:
    """[name](target), named after its file."""
    return f"[{os.path.basename(target)}]({target})"


def pair_folder(model: str, other: str) -> str:
    """A compare pair's folder relative to the summary report (results/summary/report.md)."""
    return os.path.relpath(COMPARE.format(model=model, other=other), SUMMARY) + "/"


def layer_rows(by_layer: pd.DataFrame | None) -> pd.DataFrame:
    """A per-layer table's ALL_TYPES rows of the transformer blocks (layer_index known)."""
    if not has(by_layer, "layer_index", "block_type"):
        return pd.DataFrame(columns=["layer_index", "block_type"])
    rows = by_layer[by_layer["block_type"] == ALL_TYPES]
    return rows[np.isfinite(numbers(rows, "layer_index"))]


def top_layers(by_layer: pd.DataFrame | None, column: str) -> str:
    """"2 (0.0456), 5 (0.03) and 1 (0.02)": the TOP_LAYERS layers with the largest finite `column`."""
    rows = layer_rows(by_layer)
    rows = rows.assign(value=numbers(rows, column), layer=numbers(rows, "layer_index"))
    rows = rows[np.isfinite(rows["value"])].sort_values("value", ascending=False, kind="stable").head(TOP_LAYERS)
    named = [f"{int(r.layer)} ({number(r.value)})" for r in rows.itertuples()]
    if len(named) < 2:
        return "".join(named)
    return ", ".join(named[:-1]) + f" and {named[-1]}"


def layer_median(by_layer: pd.DataFrame | None, column: str) -> float:
    values = numbers(layer_rows(by_layer), column)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else np.nan


def type_counts(rows: pd.DataFrame) -> str:
    """"embedding 1, q_proj 2": rows per block type."""
    counts = rows["block_type"].astype(str).value_counts(sort=False)
    return ", ".join(f"{kind} {count}" for kind, count in counts.items())


def where(row) -> str:
    """A matrix for a sentence: "q_proj layer 3", or its name outside the blocks."""
    layer = row.get("layer_index")
    if layer is not None and not pd.isna(layer):
        return f"{row['block_type']} layer {int(layer)}"
    return str(row.get("matrix") or row.get("param_name") or row["block_type"])


# --- a model against its base ----------------------------------------------------------------------

def moved_most_finding(deltas, by_layer, model: str, base: str, prefix: str = "") -> str | None:
    """How much the model moved overall, and which layers moved most."""
    whole = delta_group(deltas)
    if whole["matrices"] == 0:
        return None
    source = md_link(prefix + DELTAS_BY_LAYER_FILE)
    if whole["relative_change"] == 0:
        return (f"All {plural(whole['matrices'], 'matrix')} of {model} are bit-identical to {base}: nothing moved "
                f"({source}).")
    start = base if base == "the base" else f"its base ({base})"
    lead = (f"{model} moved from {start} by a pooled relative change of {number(whole['relative_change'])} "
            f"(sqrt(Σ‖ΔW‖²_F / Σ‖W_base‖²_F) over its {plural(whole['matrices'], 'matrix')} compared)")
    layers = top_layers(by_layer, "relative_change")
    if not layers:
        return f"{lead} ({source})."
    return (f"{lead}; the layers with the largest change (measured, not tested): {layers} (the median layer: "
            f"{number(layer_median(by_layer, 'relative_change'))}) ({source}).")


def block_type_finding(deltas, prefix: str = "") -> str | None:
    """Which block type moved most, pooled over all layers."""
    kinds = delta_by_type(deltas)
    kinds = kinds[np.isfinite(kinds["relative_change"].astype(float))]
    if kinds.empty:
        return None
    listed = ", ".join(f"{r.block_type} {number(r.relative_change)}" for r in kinds.head(LISTED_TYPES).itertuples())
    more = f" and {len(kinds) - LISTED_TYPES} more" if len(kinds) > LISTED_TYPES else ""
    top = kinds.iloc[0]
    ranking = (f"the largest is {top['block_type']}'s (a ranking of measured changes, not a test)" if len(kinds) > 1
               else f"only {top['block_type']} was compared")
    return (f"By block type (pooled relative change over all layers): {listed}{more}; {ranking} "
            f"({md_link(prefix + DELTAS_FILE)}).")


def low_rank_finding(deltas, prefix: str = "") -> str | None:
    """How low-rank the update is: the rank that holds 90 % of ΔW's energy, against the design rank."""
    moved = changed(compared(deltas))
    ranks = numbers(moved, "delta_energy_rank_90")
    finite = np.isfinite(ranks)
    if not finite.any():
        return None
    design = np.minimum(numbers(moved, "rows"), numbers(moved, "cols"))[finite]
    widest = moved.iloc[int(np.nanargmax(np.where(finite, ranks, -np.inf)))]
    scale = ""
    if np.isfinite(design).any():
        spread = "" if np.nanmin(design) == np.nanmax(design) else f" (median; {spread_words(design)})"
        scale = f", of a design rank min(rows, cols) of {np.nanmedian(design):g}{spread}"
    sentence = (f"90 % of the update's energy (Σσ² of ΔW) fits in rank {spread_words(ranks[finite])} per changed "
                f"matrix (median {np.median(ranks[finite]):g}; largest at {where(widest)}){scale}, over "
                f"{plural(int(finite.sum()), 'changed matrix')}")
    numerical = numbers(moved, "delta_numerical_rank")
    numerical = numerical[np.isfinite(numerical)]
    if numerical.size:
        sentence += (f"; ΔW's numerical rank above the storage rounding is {spread_words(numerical)} (median "
                     f"{np.median(numerical):g})")
    no_tail = int((moved["status"] == DELTA_NO_TAIL).sum())
    if no_tail:
        verb = "has" if no_tail == 1 else "have"
        sentence += (f"; {no_tail} of {plural(len(moved), 'changed matrix')} {verb} too few singular values above the "
                     "rounding level for a tail fit (no delta α)")
    return f"{sentence} ({md_link(prefix + DELTAS_FILE)})."


def unchanged_finding(deltas, base: str, prefix: str = "") -> str | None:
    """How many matrices did not move (bit-identical) or moved no more than storage rounding, and what that means."""
    rows = compared(deltas)
    if rows.empty:
        return None
    same = rows[rows["status"] == DELTA_UNCHANGED]
    rounding = rows[rows["status"] == DELTA_BELOW_ROUNDING]
    moved = len(changed(rows))
    source = md_link(prefix + "deltas.csv")
    if same.empty and rounding.empty:
        return (f"All {plural(len(rows), 'compared matrix')} changed by more than the stored formats' rounding: "
                f"none is bit-identical to {base} ({source}).")
    parts = [f"{len(same)} are bit-identical to {base}" + (f" ({type_counts(same)})" if len(same) else ""),
             f"{len(rounding)} changed by no more than the stored formats' rounding"
             + (f" ({type_counts(rounding)})" if len(rounding) else "")]
    return (f"Of the {plural(len(rows), 'compared matrix')}, {moved} changed, {parts[0]} and {parts[1]}. A "
            "bit-identical matrix may still have been trained: an update smaller than half a rounding step of the "
            "stored format disappears when the weights are stored (a bf16 fine-tune can change weights by less "
            "than bf16 can show); a change at or under the rounding level (‖ΔW‖₂ against the stored formats' "
            f"rounding) cannot be told from storage noise ({source}).")


def spread_words(values: np.ndarray) -> str:
    """"8" for one value, "4 to 16" for several."""
    values = values[np.isfinite(values)]
    return f"{values.min():g}" if values.min() == values.max() else f"{values.min():g} to {values.max():g}"


def adapter_finding(deltas, prefix: str = "") -> str | None:
    """An adapter's rank r and scale, and the measured rank of its updates."""
    if not has(deltas, "adapter_rank", "adapter_scale"):
        return None
    rows = deltas[np.isfinite(numbers(deltas, "adapter_rank"))]
    if rows.empty:
        return None
    ranks, scales = numbers(rows, "adapter_rank"), numbers(rows, "adapter_scale")
    numerical = numbers(rows, "delta_numerical_rank")
    numerical = numerical[np.isfinite(numerical)]
    measured = (f"; the measured numerical rank of its updates is {np.median(numerical):g} (median; max "
                f"{numerical.max():g})" if numerical.size else "")
    return (f"A LoRA adapter of rank r = {spread_words(ranks)} and scale {spread_words(scales)} (ΔW = scale · B A) "
            f"on {plural(len(rows), 'target matrix')} ({type_counts(rows)}): each update has rank at most r by "
            f"construction{measured} ({md_link(prefix + DELTAS_FILE)}).")


def name_in(frame: pd.DataFrame, column: str, default: str) -> str:
    """A table's model (or base): the first value of `column`, `default` without one."""
    values = frame[column].dropna() if column in frame else ()
    return str(values.iloc[0]) if len(values) else default


def delta_findings(deltas: pd.DataFrame | None, by_layer: pd.DataFrame | None, level: float = 0.95,
                   prefix: str = "") -> list:
    """The findings of a model against its base, in order: how much and where it moved, by block type,
    how low-rank, what did not move, the adapter. prefix: the model's results folder relative to the
    report ("" for its own report.md, "../{model}/" for the summary's). level: kept for the findings'
    common signature; nothing here is tested."""
    if not has(deltas, "status", "block_type"):
        return []
    base, model = name_in(deltas, "base", "the base"), name_in(deltas, "model", "the model")
    found = [moved_most_finding(deltas, by_layer, model, base, prefix), block_type_finding(deltas, prefix),
             low_rank_finding(deltas, prefix), unchanged_finding(deltas, base, prefix),
             adapter_finding(deltas, prefix)]
    return [sentence for sentence in found if sentence]


COUNTS = ("matrices", "changed")
SIZES = ("relative_change", "relative_distance", "delta_frobenius", "frobenius_distance")
COSINES = ("weight_cosine", "subspace_overlap_left", "subspace_overlap_right")


def layer_label(value) -> str:
    return "outside the blocks" if pd.isna(value) else str(int(value))


def cell(column: str, value) -> str:
    """A per-layer table's cell: counts as integers, sizes to 3 significant digits (a fine-tune's change
    can be 1e-6, which fixed places would print as 0), cosines to 4 places (near 1 is where they differ),
    ranks to 4 significant digits."""
    if value is None or pd.isna(value):
        return ""
    if column in COUNTS:
        return str(int(value))
    if column in SIZES:
        return number(value)
    return f"{float(value):.4f}" if column in COSINES else f"{float(value):.4g}"


def compact_by_layer(by_layer: pd.DataFrame | None, columns: dict) -> pd.DataFrame:
    """The ALL_TYPES rows of a per-layer table as text: layer, then `columns` (name -> header)."""
    if not has(by_layer, "layer_index", "block_type"):
        return pd.DataFrame()
    rows = by_layer[by_layer["block_type"] == ALL_TYPES]
    shown = pd.DataFrame({"layer": [layer_label(v) for v in pd.to_numeric(rows["layer_index"], errors="coerce")]})
    for column, header in columns.items():
        values = pd.to_numeric(rows[column], errors="coerce") if column in rows else [np.nan] * len(rows)
        shown[header] = [cell(column, v) for v in values]
    return shown


def text_table(frame: pd.DataFrame) -> str:
    """A table of text cells in Markdown, as written (no re-parsing into numbers), numbers right-aligned."""
    if frame.empty:
        return "_(none)_\n"
    align = ["left"] + ["right"] * (len(frame.columns) - 1)
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align) + "\n"


def figure_lines(figures: dict) -> list:
    """Markdown lines: one link per figure (name -> its path relative to the report)."""
    return [f"- [{name}]({path})" for name, path in (figures or {}).items()] + ([""] if figures else [])


DELTA_LAYER_COLUMNS = {"matrices": "matrices", "changed": "changed", "relative_change": "relative change (pooled)",
                       "delta_effective_rank": "ΔW effective rank", "delta_numerical_rank": "ΔW numerical rank",
                       "delta_energy_rank_90": "rank for 90 % energy", "weight_cosine": "cos(W, W_base)"}


def delta_section(deltas: pd.DataFrame | None, by_layer: pd.DataFrame | None, figures: dict, model: str, base: str,
                  level: float = 0.95, prefix: str = "", with_findings: bool = True) -> str:
    """Markdown: the model against its base: what ΔW is, the findings (unless the report lists them
    already: with_findings False), a per-layer table (ALL_TYPES rows), the figures (name -> path
    relative to the report) and where the per-matrix table is."""
    lines = [f"## {model} against its base ({base})", ""]
    if not has(deltas, "status", "block_type"):
        return "\n".join(lines + ["_(no delta: the deltas table is empty)_", ""])
    adapter = has(deltas, "adapter_rank") and bool(np.isfinite(numbers(deltas, "adapter_rank")).any())
    what = (f"ΔW = scale · B A per adapted matrix, from the adapter's factors (its singular values from the r x r "
            f"core after QR of B and A, never the dense product), against {base}'s stored values. " if adapter else
            f"ΔW = W − W_base per matrix, in float64 from the stored values of {model} and {base}. ")
    findings = ["Findings (descriptive: nothing here is tested):", "",
                *[f"- {sentence}" for sentence in delta_findings(deltas, by_layer, level, prefix)], ""]
    lines += [what + "Relative change: ‖ΔW‖_F / ‖W_base‖_F; per layer and block type it is pooled, sqrt(Σ‖ΔW‖²_F / "
              "Σ‖W_base‖²_F) over the group's matrices, so each matrix counts by its size. Ranks count singular "
              "values of ΔW above the rounding level of the stored formats, so that storage noise does not read "
              "as rank; the other columns are medians over the changed matrices. The findings are descriptive: "
              "nothing here is tested.", "",
              *(findings if with_findings else []),
              f"Per layer, over all its block types (per block type in "
              f"{md_link(prefix + DELTAS_BY_LAYER_FILE)}):", "",
              text_table(compact_by_layer(by_layer, DELTA_LAYER_COLUMNS)), ""]
    lines += figure_lines(figures)
    lines += [f"Every matrix, with its status and note: {md_link(prefix + DELTAS_FILE)}.", ""]
    return "\n".join(lines)


# --- a compare pair --------------------------------------------------------------------------------

def distance_finding(distances, by_layer, model: str, other: str, prefix: str) -> str | None:
    """How far apart the two are overall and in which layers most."""
    whole = distance_group(distances)
    if whole["matrices"] == 0:
        return None
    moved = compared(distances)
    moved = moved[moved["status"] == DELTA_CHANGED]  # a bit-identical pair's cosine of 1 says nothing
    cosines, angle = numbers(moved, "weight_cosine"), numbers(moved, "angle_degrees")
    cosines, angle = cosines[np.isfinite(cosines)], angle[np.isfinite(angle)]
    cosine = ""
    if cosines.size:
        cosine = (f"; over the {plural(len(moved), 'matrix')} that differ, the median weight cosine is "
                  f"{np.median(cosines):.4f}")
        cosine += f" (an angle of {np.median(angle):.2f}°)" if angle.size else ""
    layers = top_layers(by_layer, "relative_distance")
    layers = (f"; furthest apart in layers {layers} (the median layer: "
              f"{number(layer_median(by_layer, 'relative_distance'))})" if layers else "")
    return (f"{model} against {other}: a pooled relative distance of {number(whole['relative_distance'])} "
            f"(sqrt(Σ‖A − B‖²_F / Σ‖B‖²_F), B the matrix of {other}, over the "
            f"{plural(whole['matrices'], 'matrix')} of one shape in both){layers}{cosine} "
            f"({md_link(prefix + COMPARE_BY_LAYER_FILE)}).")


def random_overlap(rows: pd.DataFrame, side: str) -> float:
    """The median k / n: the mean squared cosine of the principal angles between two unrelated random
    k-dimensional subspaces of R^n (n: rows for the left singular vectors, cols for the right)."""
    n = numbers(rows, "rows" if side == "left" else "cols")
    ratio = numbers(rows, "subspace_k") / n
    ratio = ratio[np.isfinite(ratio)]
    return float(np.median(ratio)) if ratio.size else np.nan


def median_words(values: np.ndarray) -> str:
    """The median of the finite values to 3 places, "NaN" without one."""
    values = values[np.isfinite(values)]
    return f"{np.median(values):.3f}" if values.size else "NaN"


def subspace_finding(distances, other: str, prefix: str) -> str | None:
    """Whether the top-k singular subspaces agree, against what unrelated subspaces would give."""
    rows = compared(distances)
    left, right = numbers(rows, "subspace_overlap_left"), numbers(rows, "subspace_overlap_right")
    if not (np.isfinite(left).any() or np.isfinite(right).any()):
        return None
    k = numbers(rows, "subspace_k")
    k = k[np.isfinite(k)]
    both = np.fmin(left, right)
    least = rows.iloc[int(np.nanargmin(np.where(np.isfinite(both), both, np.inf)))]
    chance = (f"{random_overlap(rows, 'left'):.3g} left and {random_overlap(rows, 'right'):.3g} right")
    top = spread_words(k) if k.size else "k"
    return (f"Their top-{top} singular subspaces overlap by a median {median_words(left)} (left) and "
            f"{median_words(right)} (right), the mean squared cosine of the principal angles: 1 for the same "
            f"subspaces, k / n for unrelated random ones (median {chance}); the least overlapping: {where(least)} "
            f"({number(np.nanmin([least['subspace_overlap_left'], least['subspace_overlap_right']]))}) "
            f"({md_link(prefix + DISTANCES_FILE)}).")


def not_compared_finding(distances, model: str, other: str, prefix: str) -> str | None:
    """The matrices of one model without a counterpart of one shape in the other."""
    shapes = int((distances["status"] == SHAPES_DIFFER).sum())
    missing = int((distances["status"] == MISSING_IN_OTHER).sum())
    if shapes + missing == 0:
        return None
    return (f"{plural(shapes + missing, 'matrix')} of {model} not compared: {shapes} with another shape in "
            f"{other}, {missing} missing in {other} ({md_link(prefix + DISTANCES_FILE)}).")


def compare_findings(distances: pd.DataFrame | None, by_layer: pd.DataFrame | None, model: str, other: str,
                     prefix: str | None = None) -> list:
    """The findings of a compare pair: the distance and where it is largest, the subspaces' overlap, what
    was not compared. prefix: the pair's folder relative to the report (default: from the summary report)."""
    if not has(distances, "status", "block_type"):
        return []
    prefix = pair_folder(model, other) if prefix is None else prefix
    found = [distance_finding(distances, by_layer, model, other, prefix),
             subspace_finding(distances, other, prefix), not_compared_finding(distances, model, other, prefix)]
    return [sentence for sentence in found if sentence]


COMPARE_LAYER_COLUMNS = {"matrices": "matrices", "relative_distance": "relative distance (pooled)",
                         "frobenius_distance": "‖A − B‖_F", "weight_cosine": "weight cosine",
                         "subspace_overlap_left": "overlap left", "subspace_overlap_right": "overlap right"}


def compare_section(distances: pd.DataFrame | None, by_layer: pd.DataFrame | None, figures: dict, model: str,
                    other: str, prefix: str | None = None) -> str:
    """Markdown: a compare pair: what is measured, the findings, a per-layer table (ALL_TYPES rows), the
    figures (name -> path relative to the report) and where the per-matrix table is."""
    prefix = pair_folder(model, other) if prefix is None else prefix
    lines = [f"## {model} against {other}", ""]
    if not has(distances, "status", "block_type"):
        return "\n".join(lines + ["_(no distance: the distances table is empty)_", ""])
    lines += [f"Per matrix of one name and shape in both (B the matrix of {other}): the Frobenius and spectral "
              "norms of A − B, relative distance ‖A − B‖_F / ‖B‖_F, the cosine and angle between the flattened "
              "weights, and the overlap of their top-k singular subspaces (the mean squared cosine of the principal "
              "angles, left and right singular vectors). Per layer the relative distance is pooled over the layer's "
              "matrices; the other columns are medians.", "",
              "Findings (descriptive: nothing here is tested):", "",
              *[f"- {sentence}" for sentence in compare_findings(distances, by_layer, model, other, prefix)], "",
              f"Per layer, over all its block types (per block type in {md_link(prefix + COMPARE_BY_LAYER_FILE)}):", "",
              text_table(compact_by_layer(by_layer, COMPARE_LAYER_COLUMNS)), ""]
    lines += figure_lines(figures)
    lines += [f"Every matrix, with its status: {md_link(prefix + DISTANCES_FILE)}.", ""]
    return "\n".join(lines)
