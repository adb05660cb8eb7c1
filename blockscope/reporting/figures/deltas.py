"""Figures of a model against another: a fine-tune's pooled relative change per layer and block
type (a heatmap, log colour scale), the effective and numerical rank of its updates per layer; a
compare pair's relative distance and subspace overlap per layer; a series' medians along its
members. Each function writes one figure in every format (layout.figure_files(stem, formats))."""

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

from blockscope.aggregation.delta_tables import changed, compared, numbers, type_order
from blockscope.layout import ALL_TYPES, figure_files
from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, panel_grid, plt, save

OUTSIDE = "outside blocks"  # the row of embed and lm_head (layer_index NA)
MARKERS = "osD^v<>pXh*"


def pair_title(frame, what: str, other: str = "base") -> str:
    """"m against b: <what>" from a table's model and base (or other) columns."""
    names = [str(frame[c].dropna().iloc[0]) if c in frame and frame[c].notna().any() else "?"
             for c in ("model", other)]
    return f"{names[0]} against {names[1]}: {what}"


def type_styles(types) -> dict:
    """One colour and marker per block type, the same in every panel."""
    return {t: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, t in enumerate(types)}


def layer_keys(frame) -> list:
    """The layers of a table in order, then OUTSIDE where a row has no layer."""
    layer = numbers(frame, "layer_index")
    return [int(v) for v in np.unique(layer[np.isfinite(layer)])] + ([OUTSIDE] if np.isnan(layer).any() else [])


def layer_key(value):
    return OUTSIDE if pd.isna(value) else int(value)


def finish_panels(fig, axes, title, target):
    """The two-panel figures' ending: the first panel's legend, label sizes, the title, written."""
    axes[0].legend(fontsize=7)
    for ax in axes[:2]:
        ax.yaxis.label.set_size(9)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)


def relative_change_heatmap(by_layer, stem, formats, title=None):
    """Layers (rows; the embedding and head last) x block types (columns, then all types): the pooled
    relative change sqrt(Σ‖ΔW‖²_F / Σ‖W_base‖²_F), log colour scale; a cell of 0 (nothing moved) hatched grey."""
    target = figure_files(stem, formats)
    title = title or (pair_title(by_layer, "pooled relative change ‖ΔW‖_F / ‖W_base‖_F")
                      if not lacks(by_layer, "model") else "relative change per layer and block type")
    if lacks(by_layer, "layer_index", "block_type", "relative_change"):
        return nothing_to_plot("the deltas table is empty", title, target)
    values = numbers(by_layer, "relative_change")
    if not np.isfinite(values).any():
        return nothing_to_plot("no matrix has both norms", title, target)
    rows = layer_keys(by_layer)
    columns = [*type_order(by_layer["block_type"]), ALL_TYPES]
    grid = np.full((len(rows), len(columns)), np.nan)
    for key, kind, value in zip(by_layer["layer_index"], by_layer["block_type"], values):
        grid[rows.index(layer_key(key)), columns.index(kind)] = value
    positive = grid[np.isfinite(grid) & (grid > 0)]
    fig, ax = plt.subplots(figsize=(1.0 * len(columns) + 3, 0.32 * len(rows) + 2.2))
    ax.set_facecolor("0.9")  # no matrix of that type in that layer
    if positive.size:
        low, high = positive.min(), positive.max()
        image = ax.imshow(np.where(grid > 0, grid, np.nan), aspect="auto", cmap="viridis",
                          norm=LogNorm(vmin=low, vmax=high if high > low else low * 10))
        fig.colorbar(image, ax=ax, label="pooled relative change (log scale)")
    for r, c in zip(*np.nonzero(grid == 0)):
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="0.75", hatch="//", edgecolor="0.5", lw=0))
        ax.text(c, r, "0", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7 if len(rows) > 24 else 9)
    ax.set(xlim=(-0.5, len(columns) - 0.5), ylim=(len(rows) - 0.5, -0.5), xlabel="block type", ylabel="layer",
           title=title)
    ax.title.set_fontsize(10)
    save(fig, target)


def per_layer_median(rows, column) -> pd.Series:
    """The median of a column per layer (rows in one block type), layers without a value left out."""
    values = pd.Series(numbers(rows, column), index=numbers(rows, "layer_index"))
    values = values[np.isfinite(values.index) & np.isfinite(values.to_numpy())]
    return values.groupby(level=0).median().sort_index()


def lines_by_type(ax, frame, column, styles, label):
    """One line with markers per block type: the per-layer median of `column`."""
    for kind, (color, marker) in styles.items():
        series = per_layer_median(frame[frame["block_type"] == kind], column)
        if len(series):
            ax.plot(series.index, series.to_numpy(), marker=marker, ms=4, lw=1, color=color, label=kind)
    ax.set(xlabel="layer", ylabel=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def delta_effective_rank(deltas, stem, formats, title=None):
    """Two panels against layer, one line and marker per block type (the median over a layer's
    changed matrices of that type): ΔW's effective rank, and its numerical rank above the storage rounding."""
    target = figure_files(stem, formats)
    title = title or (pair_title(deltas, "rank of the update ΔW per layer") if not lacks(deltas, "model")
                      else "rank of the update per layer")
    if lacks(deltas, "layer_index", "block_type", "status", "delta_effective_rank", "delta_numerical_rank"):
        return nothing_to_plot("the deltas table is empty", title, target)
    moved = changed(compared(deltas))
    moved = moved[np.isfinite(numbers(moved, "layer_index"))]
    if not (np.isfinite(numbers(moved, "delta_effective_rank")).any()
            or np.isfinite(numbers(moved, "delta_numerical_rank")).any()):
        return nothing_to_plot("no matrix in the transformer blocks changed beyond the storage rounding",
                               title, target)
    styles = type_styles(type_order(moved["block_type"]))
    fig, axes = panel_grid(2, width=5.5, height=3.8, columns=2)
    lines_by_type(axes[0], moved, "delta_effective_rank", styles, "ΔW effective rank (exp entropy of σ)")
    lines_by_type(axes[1], moved, "delta_numerical_rank", styles, "ΔW numerical rank (σ above rounding)")
    finish_panels(fig, axes, title, target)


def distance_by_layer(by_layer, stem, formats, title=None):
    """A compare pair per layer: the pooled relative distance (log scale where positive) and the top-k
    subspace overlap, left (solid) and right (dashed), one line per block type; all types in black."""
    target = figure_files(stem, formats)
    title = title or (pair_title(by_layer, "distance per layer", "other") if not lacks(by_layer, "model")
                      else "distance per layer")
    if lacks(by_layer, "layer_index", "block_type", "relative_distance"):
        return nothing_to_plot("the distances table is empty", title, target)
    inside = by_layer[np.isfinite(numbers(by_layer, "layer_index"))]
    if not np.isfinite(numbers(inside, "relative_distance")).any():
        return nothing_to_plot("no matrix of the transformer blocks has one shape in both models", title, target)
    kinds = type_order(inside["block_type"])
    styles = {**type_styles(kinds), ALL_TYPES: ("k", "o")}
    fig, axes = panel_grid(2, width=5.5, height=3.8, columns=2)
    lines_by_type(axes[0], inside, "relative_distance", styles, "relative distance ‖A − B‖_F / ‖B‖_F (pooled)")
    if (numbers(inside, "relative_distance")[np.isfinite(numbers(inside, "relative_distance"))] > 0).all():
        axes[0].set_yscale("log")
    for side, dash in (("left", "-"), ("right", "--")):
        column = f"subspace_overlap_{side}"
        for kind, (color, marker) in styles.items():
            series = per_layer_median(inside[inside["block_type"] == kind], column)
            if len(series):
                axes[1].plot(series.index, series.to_numpy(), ls=dash, marker=marker, ms=3, lw=1, color=color)
    axes[1].set(xlabel="layer", ylabel="top-k subspace overlap (mean cos²)", ylim=(-0.02, 1.02))
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].legend(handles=[plt.Line2D([], [], color="0.3", ls="-", label="left singular vectors"),
                            plt.Line2D([], [], color="0.3", ls="--", label="right singular vectors")], fontsize=7)
    finish_panels(fig, axes, title, target)


def along_series(ax, series, column, styles, members, label):
    """One line per block type of `column` against the members' positions."""
    for kind, (color, marker) in styles.items():
        rows = series[series["block_type"] == kind].sort_values("position")
        values = numbers(rows, column)
        if np.isfinite(values).any():
            ax.plot(numbers(rows, "position"), values, marker=marker, ms=4, lw=1.6 if kind == ALL_TYPES else 1,
                    color=color, label=kind)
    ax.set_xticks(range(len(members)), members, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=label)
    ax.yaxis.label.set_size(9)


def series_trend(series, stem, formats, title=None):
    """Along a series (members in order): median α, median effective rank per block type (all types
    in black), and the pooled relative change from the previous member."""
    target = figure_files(stem, formats)
    name = str(series["series"].iloc[0]) if not lacks(series, "series") else "?"
    title = title or f"series {name}: medians along the members"
    if lacks(series, "position", "model", "block_type", "alpha", "effective_rank", "relative_change_from_previous"):
        return nothing_to_plot("the series table is empty", title, target)
    members = list(series.sort_values("position", kind="stable").drop_duplicates("position")["model"].astype(str))
    styles = {**type_styles(type_order(series["block_type"])), ALL_TYPES: ("k", "o")}
    fig, axes = panel_grid(3, width=4.8, height=3.8, columns=3)
    along_series(axes[0], series, "alpha", styles, members, "median α")
    along_series(axes[1], series, "effective_rank", styles, members, "median effective rank")
    along_series(axes[2], series, "relative_change_from_previous", styles, members,
                 "relative change from the previous member")
    changes = numbers(series, "relative_change_from_previous")
    if np.isfinite(changes).any() and (changes[np.isfinite(changes)] > 0).all():
        axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)
