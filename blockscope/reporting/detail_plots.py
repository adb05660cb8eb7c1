"""Figures of the original notebook's and scripts' views: the down projections' variance
explained, alpha-Hill per precision by weight category and per matrix, and the head-merge
comparison per threshold. Same conventions as plots: headless, atomic, `target` a path or a list
of paths (one per report.formats), "nothing to plot: <reason>" instead of a failure."""

import numpy as np
import pandas as pd

from blockscope.layout import ENERGY_FRACTIONS
from blockscope.reporting.plots import lacks, nothing_to_plot, plt, save
from blockscope.aggregation.detail_tables import energy_milestones, variance_explained


def short_name(matrix: str) -> str:
    """model.layers.3.mlp.down_proj.weight -> L3.mlp.down_proj."""
    return matrix.replace("model.layers.", "L").removesuffix(".weight")


def down_proj_variance(spectra: dict, title, target, reason="no down projection in the chosen layers"):
    """spectra: label (layer L) -> sigma of its down projection. Left: each component's share of Σσ²;
    right: the cumulative share, the 50-99 % levels dashed and n99 marked per layer."""
    if not spectra:
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (label, sigma) in enumerate(spectra.items()):
        share = variance_explained(np.sort(np.asarray(sigma, dtype=np.float64))[::-1])
        components = np.arange(1, share.size + 1)
        n99 = energy_milestones(sigma)["energy_rank_99"]
        axes[0].semilogy(components, share, color=f"C{i}", lw=1, label=label)
        axes[1].plot(components, np.cumsum(share), color=f"C{i}", lw=1.2, label=f"{label} (n99 = {n99})")
        axes[1].axvline(n99, color=f"C{i}", ls=":", lw=0.9)
    for level in ENERGY_FRACTIONS:
        axes[1].axhline(level, color="grey", lw=0.5, ls="--")
    axes[0].set(xlabel="component (by σ, descending)", ylabel="variance explained, σᵢ² / Σσ² (log scale)",
                title="variance explained per component")
    axes[1].set(xlabel="components", ylabel="cumulative share of Σσ²", ylim=(0, 1.02),
                title="cumulative (dashed: 50/75/90/95/99 %; dotted: n99)")
    for ax in axes:
        ax.legend(fontsize=8)
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


def relative_change(value, base) -> str:
    """'+1.2 % vs original', or '' where there is no base to compare with."""
    return f"{100 * (value - base) / base:+.2f} % vs original" if base and np.isfinite(value) else ""


def headmerge_comparison(row: dict, title, target):
    """One threshold: perplexity and next-token accuracy of the original model, the merged one
    and the random control (mean ± sd over seeds, sd where the summary has it)."""
    if lacks(row, "perplexity", "accuracy", "base_perplexity", "base_accuracy"):
        return nothing_to_plot("the head-merge summary has no row for this threshold", title, target)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    labels = ["original", "merged", "random control\n(mean ± sd)"]
    for ax, metric in zip(axes, ("perplexity", "accuracy")):
        values = [row[f"base_{metric}"], row[metric], row.get(f"random_{metric}_mean", np.nan)]
        errors = [0, 0, row.get(f"random_{metric}_std", 0) or 0]
        bars = ax.bar(labels, values, yerr=np.nan_to_num(errors), capsize=4, color=["grey", "C0", "C3"])
        changes = ["", *(relative_change(v, values[0]) for v in values[1:])]
        texts = [f"{v:.4g}" + (f"\n({change})" if change else "") for v, change in zip(values, changes)]
        ax.bar_label(bars, labels=texts, fontsize=8, padding=3)
        ax.margins(y=0.15)
        ax.set(ylabel=f"{metric} (WikiText-2)" if metric == "perplexity" else "next-token accuracy", title=metric)
    fig.suptitle(f"{title}: {int(row.get('merged_pairs', 0))} head pairs merged")
    fig.tight_layout()
    save(fig, target)


def headmerge_layer_pairs(row: dict, layers, title, target):
    """One threshold: how many head pairs it merges in each layer."""
    counts = [row.get(f"pairs_layer_{layer}", np.nan) for layer in layers]
    if not layers or not np.isfinite(np.asarray(counts, dtype=np.float64)).any():
        return nothing_to_plot("no layer with attention heads to merge", title, target)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layers) + 2), 3.8))
    bars = ax.bar([str(layer) for layer in layers], np.nan_to_num(counts), color="C0")
    ax.bar_label(bars, fontsize=7)
    ax.set(xlabel="layer", ylabel="merged head pairs", title=title)
    save(fig, target)
