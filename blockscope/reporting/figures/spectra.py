"""Figures of the singular-value spectra: each main metric against layer (the random twin dashed)
and, across models, against relative depth; one layer's ESDs with their power-law fits (and, when
the diagnostics ran, the elementwise-permuted matrices' ESDs with their Marchenko-Pastur bulk edges);
and the down projections' variance explained per component."""

import textwrap

import numpy as np
from matplotlib.ticker import NullFormatter

from blockscope.aggregation.detail_tables import energy_milestones, variance_explained
from blockscope.layout import ENERGY_FRACTIONS
from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, panel_grid, plt, save

METRIC_LABELS = {
    "alpha": "α (power-law exponent of the ESD, KS fit)",
    "alpha_hill": "α-Hill (top 10 % of eigenvalues)",
    "effective_rank": "effective rank (exp entropy of σ)",
    "stable_rank": "stable rank (Σσ² / σ²max)",
    "svd_90_percent_rank": "components for 90 % of Σσ²",
}


def measured_kinds(metrics, metric) -> list:
    """The weight types with a finite value of `metric`: a panel each (1-D norms, all NaN, get none)."""
    return sorted(metrics.loc[np.isfinite(metrics[metric].astype(float)), "block_type"].unique())


def metric_by_layer(metrics, metric, title, target, control=None, reason=None):
    """One panel per weight type: the metric against layer (the random twin dashed, if given)."""
    if lacks(metrics, "layer_index", "block_type", metric):
        return nothing_to_plot(reason or f"no {metric} values: the metrics table is empty", title, target)
    inside = metrics.dropna(subset=["layer_index"])
    if inside[metric].notna().sum() == 0:
        return nothing_to_plot(reason or f"no finite {metric} value in any transformer block", title, target)
    if lacks(control, "layer_index", "block_type", metric):
        control = None
    kinds = measured_kinds(inside, metric)
    fig, axes = panel_grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        for frame, style, label in ((inside, "-o", "trained"), (control, "--", "random init")):
            if frame is None:
                continue
            part = frame[(frame["block_type"] == kind)].dropna(subset=["layer_index"])
            series = part.groupby("layer_index")[metric].mean()
            ax.plot(series.index, series.values, style, ms=3, label=label)
        ax.set(title=kind, xlabel="layer", ylabel=METRIC_LABELS.get(metric, metric))
        ax.title.set_size(10)
        ax.yaxis.label.set_size(8)
        if control is not None:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)


def depth_overlay(metrics, metric, title, target, reason=None):
    """Per weight type, the metric against relative depth, one line per model (controls dashed)."""
    if lacks(metrics, "relative_depth", "block_type", "model", "control_of", metric):
        return nothing_to_plot(reason or f"no {metric} values: the metrics table is empty", title, target)
    inside = metrics.dropna(subset=["relative_depth"])
    if inside[metric].notna().sum() == 0:
        return nothing_to_plot(reason or f"no finite {metric} value in any transformer block", title, target)
    kinds = measured_kinds(inside, metric)
    fig, axes = panel_grid(len(kinds))
    for ax, kind in zip(axes, kinds):
        for i, (model, part) in enumerate(inside[inside["block_type"] == kind].groupby("model")):
            series = part.groupby("relative_depth")[metric].mean()
            control = isinstance(part["control_of"].iloc[0], str)
            ax.plot(series.index, series.values, "--" if control else "-", color=f"C{i}", label=model)
        ax.set(title=kind, xlabel="relative depth (layer / layers)", ylabel=METRIC_LABELS.get(metric, metric))
        ax.title.set_size(10)
        ax.yaxis.label.set_size(8)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)


RANDOMISED_LABEL = "randomised (elementwise permutation)"
RANDOMISED_COLOR = "C2"


def drawable(eigs) -> np.ndarray:
    """The eigenvalues a log-log ESD can show: finite and above 1e-5."""
    eigs = np.asarray(eigs, dtype=np.float64)
    return eigs[np.isfinite(eigs) & (eigs > 1e-5)]


def esd(panels, title, target, reason="no matrix in this layer", randomised=None):
    """Log-log ESDs with the fitted power law from xmin; panels: (name, eigenvalues, alpha, xmin)
    or (name, eigenvalues, alpha, xmin, status), the status shown where there is no spectrum.
    randomised: None, or one entry per panel, None or (eigenvalues of the elementwise-permuted
    matrix, its Marchenko-Pastur bulk edge lambda+ or NaN), both in lambda = sigma^2: the permuted
    ESD is overlaid in the same bins (spanning both spectra) with its bulk edge as a vertical line."""
    if not panels:
        return nothing_to_plot(reason, title, target)
    randomised = [None] * len(panels) if randomised is None else list(randomised)
    if len(randomised) != len(panels):
        raise ValueError(f"esd: {len(randomised)} randomised spectra for {len(panels)} panels")
    fig, axes = panel_grid(len(panels))
    for ax, (name, eigs, alpha, xmin, *status), permuted in zip(axes, panels, randomised):
        eigs = drawable(eigs)
        if eigs.size < 2:
            why = status[0] if status and status[0] and status[0] != "ok" else "no spectrum"
            ax.set_title(textwrap.fill(f"{name}: {why}", 45), fontsize=8)
            ax.axis("off")
            continue
        rand_eigs, edge = (drawable(permuted[0]), permuted[1]) if permuted is not None else (np.zeros(0), np.nan)
        shown = np.concatenate([eigs, rand_eigs]) if rand_eigs.size >= 2 else eigs
        bins = np.logspace(np.log10(shown.min()), np.log10(shown.max()), 40)
        ax.hist(eigs, bins=bins, density=True, alpha=0.6, color="C0", label="ESD")
        if rand_eigs.size >= 2:
            ax.hist(rand_eigs, bins=bins, density=True, histtype="step", lw=1.2, color=RANDOMISED_COLOR,
                    label=RANDOMISED_LABEL)
        if edge is not None and np.isfinite(edge) and edge > 0:
            ax.axvline(edge, color=RANDOMISED_COLOR, ls=":", lw=1.2, label=f"randomised MP bulk edge λ+ = {edge:.3g}")
        if np.isfinite(alpha) and np.isfinite(xmin) and xmin > 0:
            tail = eigs[eigs >= xmin]
            share = tail.size / eigs.size
            x = np.logspace(np.log10(xmin), np.log10(eigs.max()), 50)
            ax.plot(x, share * (alpha - 1) / xmin * (x / xmin) ** (-alpha), "C3", label=f"power law α = {alpha:.2f}")
            ax.axvline(xmin, color="C3", ls="--", lw=0.8, label=f"xmin = {xmin:.3g}")
        ax.set(xscale="log", yscale="log", xlabel="eigenvalue λ = σ²", ylabel="density")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a spectrum within one decade labels every minor tick
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)


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
