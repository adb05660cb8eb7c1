"""Figures of the attention heads: one head's QK-kernel eigenvalues (complex plane, sorted
magnitudes, cumulative energy) and the layers x heads map of QK and OV effective rank."""

import numpy as np

from blockscope.aggregation.detail_tables import energy_milestones
from blockscope.layout import EIGENVALUE_COLUMNS, ENERGY_FRACTIONS
from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, plt, save


def head_eigenvalues(table, title, target, reason=None):
    """Complex-plane scatter, sorted magnitudes and cumulative energy of one head's QK kernel."""
    if lacks(table, *EIGENVALUE_COLUMNS):
        reason = reason or getattr(table, "attrs", {}).get("reason") or "the eigenvalue table is empty"
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.scatter(table["real"], table["imag"], s=12, c=np.log10(table["magnitude"] + 1e-30), cmap="viridis")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set(xlabel="Re λ", ylabel="Im λ", title="eigenvalues in the complex plane (colour: log10 |λ|)")
    ax = axes[1]
    ax.semilogy(table["rank"], table["magnitude"], marker=".")
    ax.set(xlabel="rank (by |λ|)", ylabel="|λ| (log scale)", title="sorted eigenvalue magnitudes")
    ax = axes[2]
    ax.plot(table["rank"], table["cumulative_energy"], marker=".")
    for level in ENERGY_FRACTIONS:
        ax.axhline(level, color="grey", lw=0.5, ls="--")
    n99 = energy_milestones(table["magnitude"])["energy_rank_99"]
    ax.axvline(n99, color="C3", ls=":", label=f"n99 = {n99} eigenvalues hold 99 %")
    ax.legend(fontsize=8, loc="lower right")
    ax.set(xlabel="number of eigenvalues", ylabel="share of Σ|λ|²", ylim=(0, 1.02),
           title="cumulative eigenvalue energy (dashed: 50/75/90/95/99 %)")
    fig.suptitle(title)
    save(fig, target)


def heads_heatmap(heads, title, target, reason="no attention heads: no layer has q, k, v and o projections "
                                               "that the naming rules recognise"):
    """Layers x heads: QK and OV effective rank (NaN, for non-finite kernels, left blank)."""
    if lacks(heads, "layer_index", "head", "qk_effective_rank", "ov_effective_rank"):
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.25 * max(heads["layer_index"].nunique(), 8) + 2))
    for ax, column in zip(axes, ("qk_effective_rank", "ov_effective_rank")):
        grid = heads.pivot_table(index="layer_index", columns="head", values=column, dropna=False)
        image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", origin="upper")
        ax.set(xlabel="query head", ylabel="layer", title=column.replace("_", " "))
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0])[::max(1, grid.shape[0] // 16)], grid.index[::max(1, grid.shape[0] // 16)])
        fig.colorbar(image, ax=ax, label="effective rank (of d_head)")
    fig.suptitle(title)
    save(fig, target)
