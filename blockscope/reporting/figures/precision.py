"""Figures of the precision sweep (α-Hill after casting each matrix to each precision): the pages
of a few layers' matrices, the distribution over matrices per precision, the most
precision-sensitive matrices, α-Hill per weight category by layer, and one matrix's bars."""

import numpy as np
import pandas as pd

from blockscope.analysis.precision_sensitivity import most_sensitive
from blockscope.analysis.precision_sensitivity import precision_sensitivity as sensitivity_table
from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, plt, save, short_name

DISTRIBUTION_KINDS = ("box", "violin", "histogram")


def precision_page(precision, title, target, reason="no matrix in these layers"):
    """Grouped bars: alpha-Hill of each matrix of a few layers, one bar per precision swept
    (precision: the long table, one row per matrix and precision)."""
    if lacks(precision, "matrix", "precision", "alpha_hill"):
        return nothing_to_plot(reason, title, target)
    precisions = list(dict.fromkeys(precision["precision"]))
    grid = precision.pivot_table(index="matrix", columns="precision", values="alpha_hill", sort=False, dropna=False)
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(grid) + 2), 4.5))
    x = np.arange(len(grid))
    width = 0.8 / len(precisions)
    for i, name in enumerate(precisions):
        ax.bar(x + (i - (len(precisions) - 1) / 2) * width, grid[name], width, label=name)
    ax.set_xticks(x, [short_name(name) for name in grid.index], rotation=70, ha="right", fontsize=7)
    ax.set(ylabel="α-Hill after casting", title=title)
    ax.legend(title="precision")
    save(fig, target)


def precision_distributions(precision, title, target, reason="the precision sweep has no rows", kind="box"):
    """The distribution of alpha-Hill over matrices, per precision: box, violin or histogram
    (report.distribution_kind)."""
    if lacks(precision, "precision", "alpha_hill"):
        return nothing_to_plot(reason, title, target)
    if precision["alpha_hill"].notna().sum() == 0:
        return nothing_to_plot("no finite α-Hill at any precision", title, target)
    names = list(dict.fromkeys(precision["precision"]))
    data = [precision.loc[precision["precision"] == p, "alpha_hill"].dropna() for p in names]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if kind == "histogram":
        bins = np.histogram_bin_edges(np.concatenate([d.to_numpy() for d in data]), bins=30)
        for i, (name, values) in enumerate(zip(names, data)):  # thinner and dashed in turn: equal ones stay visible
            ax.hist(values, bins=bins, histtype="step", lw=max(3.0 - i, 1.0), ls=("-", "--", ":", "-.")[i % 4],
                    label=f"{name} ({len(values)} matrices)")
        ax.set(xlabel="α-Hill", ylabel="matrices", title=title)
        ax.legend(title="precision")
    else:
        if kind == "violin":
            kept = [(name, values) for name, values in zip(names, data) if len(values)]  # a violin needs values
            ax.violinplot([values for _, values in kept], showmedians=True)
            ax.set_xticks(range(1, len(kept) + 1), [name for name, _ in kept])
        else:
            ax.boxplot(data, tick_labels=names, showmeans=True)
        ax.set(xlabel="precision the matrix was cast to", ylabel="α-Hill", title=title)
    save(fig, target)


def precision_sensitivity(precision, threshold, title, target, top=20,
                          reason="no matrix has a finite α-Hill at every precision swept"):
    """The `top` matrices of largest relative range of α-Hill across precisions: the relative
    range as bars (the threshold dashed), and α-Hill per precision of the same matrices."""
    if lacks(precision, "matrix", "block_type", "precision", "alpha_hill"):
        return nothing_to_plot("the precision sweep has no rows", title, target)
    ranked = most_sensitive(sensitivity_table(precision, threshold), top)
    if ranked.empty:
        return nothing_to_plot(reason, title, target)
    names = ranked["matrix"].tolist()[::-1]  # largest at the top
    grid = precision.pivot_table(index="matrix", columns="precision", values="alpha_hill", sort=False).loc[names]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.32 * len(names) + 2.2), sharey=True)
    y = np.arange(len(names))
    colours = ["C3" if flag else "C0" for flag in ranked["precision_sensitive"].tolist()[::-1]]
    axes[0].barh(y, ranked["alpha_hill_relative_range"].to_numpy()[::-1], color=colours)
    axes[0].axvline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    axes[0].set_yticks(y, [short_name(name) for name in names], fontsize=7)
    axes[0].set(xlabel="relative range of α-Hill, (max - min) / |mean| (red: sensitive)",
                title=f"top {len(names)} by relative range")
    axes[0].legend(fontsize=8)
    for i, column in enumerate(grid.columns):
        axes[1].plot(grid[column].to_numpy(), y, "o", ms=4, color=f"C{i}", label=column)
    axes[1].set(xlabel="α-Hill after casting", title="α-Hill per precision")
    axes[1].legend(title="precision", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)


def precision_category(precision, title, target, reason="no matrix of this weight type"):
    """α-Hill of one weight category by layer, one bar per precision swept (the precision
    script's category_<type>.png); experts and fused parts of a layer are averaged, and a matrix
    outside the blocks (embedding, output) is a bar group of its own, named."""
    if lacks(precision, "matrix", "layer_index", "precision", "alpha_hill"):
        return nothing_to_plot(reason, title, target)
    if precision["alpha_hill"].notna().sum() == 0:
        return nothing_to_plot("no finite α-Hill at any precision", title, target)
    layer = precision["layer_index"]
    where = precision.assign(where=[short_name(m) if pd.isna(i) else f"{int(i)}"
                                    for i, m in zip(layer, precision["matrix"])],
                             order=layer.astype(float).fillna(np.inf))
    precisions = list(dict.fromkeys(where["precision"]))
    grid = where.pivot_table(index=["order", "where"], columns="precision", values="alpha_hill", aggfunc="mean")
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(grid) * len(precisions) ** 0.5 + 3), 4.5))
    x = np.arange(len(grid))
    width = 0.8 / len(precisions)
    for i, name in enumerate(precisions):
        ax.bar(x + (i - (len(precisions) - 1) / 2) * width, grid.get(name, np.nan), width, label=name)
    ax.set_xticks(x, grid.index.get_level_values("where"), fontsize=7)
    low, high = np.nanmin(grid.to_numpy()), np.nanmax(grid.to_numpy())
    ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
    ax.set(xlabel="layer", ylabel="α-Hill after casting", title=title)
    ax.legend(title="precision", fontsize=8)
    save(fig, target)


def precision_matrix(alphas: dict, title, target):
    """One matrix: α-Hill per precision as bars with their values written on them (the precision
    script's individual_layers/ charts). alphas: precision -> α-Hill."""
    values = np.array(list(alphas.values()), dtype=np.float64)
    if not np.isfinite(values).any():
        return nothing_to_plot("no finite α-Hill at any precision", title, target)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bars = ax.bar(list(alphas), np.nan_to_num(values), color=[f"C{i}" for i in range(len(values))])
    ax.bar_label(bars, labels=[f"{v:.4f}" if np.isfinite(v) else "NaN" for v in values], fontsize=8)
    finite = values[np.isfinite(values)]
    spread = finite.max() - finite.min()
    ax.set_ylim(max(0.0, finite.min() - 2 * spread - 0.05), finite.max() + 2 * spread + 0.05)
    ax.set(xlabel="precision", ylabel="α-Hill after casting")
    ax.set_title(title, fontsize=9)
    save(fig, target)
