"""Headless matplotlib figures. Each function draws one figure and writes it atomically.

Given nothing to draw (an empty table, a table without the columns it needs, no panels), a
function writes a figure that says "nothing to plot: <reason>" instead of failing: the reason
is the caller's `reason`, else a default that names what was missing.
"""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from blockscope.io.atomic import atomic_path  # noqa: E402
from blockscope.layout import EIGENVALUE_COLUMNS, ENERGY_FRACTIONS  # noqa: E402
from blockscope.analysis.precision_sensitivity import most_sensitive  # noqa: E402
from blockscope.aggregation.detail_tables import energy_milestones  # noqa: E402
from blockscope.analysis.precision_sensitivity import precision_sensitivity as sensitivity_table  # noqa: E402


def save(fig, target):
    """Write a figure to `target`, a path or a list of paths (layout.figure_files), each in the
    format its suffix names (png, pdf or svg)."""
    for path in [target] if isinstance(target, (str, Path)) else target:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".").lower(), dpi=110, bbox_inches="tight")
    plt.close(fig)


def nothing_to_plot(reason, title, target):
    """A figure that says why there is nothing to draw."""
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(f"nothing to plot: {reason}", 90), ha="center", va="center", fontsize=11,
            transform=ax.transAxes)
    fig.suptitle(title)
    save(fig, target)


def lacks(frame, *columns) -> bool:
    """Whether a table is missing, empty, or without one of the columns."""
    return frame is None or len(frame) == 0 or any(column not in frame for column in columns)


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


def embedding_elbow(elbows: dict, chosen: dict, title, target, reason="no embedding matrix was clustered"):
    """Inertia and silhouette against k, one column per analysed matrix."""
    if not elbows:
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, len(elbows), figsize=(6.5 * len(elbows), 4.5), squeeze=False)
    for ax, (name, elbow) in zip(axes[0], elbows.items()):
        ax.plot(elbow["k"], elbow["inertia"], marker="o", color="C0")
        ax.axvline(chosen[name], color="C3", ls="--", label=f"knee k = {chosen[name]}")
        ax.set(xlabel="k (clusters)", ylabel="k-means inertia (sum of squared distances)", title=name)
        twin = ax.twinx()
        twin.plot(elbow["k"], elbow["silhouette"], marker="s", color="C2")
        twin.set_ylabel("silhouette (sample)", color="C2")
        ax.legend(loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()  # the silhouette axis of one panel would overlap the inertia label of the next
    save(fig, target)


def embedding_pca(points: dict, title, target, reason="no embedding matrix was clustered"):
    """The sampled rows on their first two principal components, coloured by cluster."""
    if not points:
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, len(points), figsize=(6.5 * len(points), 5.5), squeeze=False)
    for ax, (name, frame) in zip(axes[0], points.items()):
        ax.scatter(frame["pc1"], frame["pc2"], c=frame["cluster"], cmap="tab20", s=3, alpha=0.6)
        ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{name}: {len(frame)} sampled rows, colour = cluster")
    fig.suptitle(title)
    save(fig, target)


METRIC_LABELS = {
    "alpha": "α (power-law exponent of the ESD, KS fit)",
    "alpha_hill": "α-Hill (top 10 % of eigenvalues)",
    "effective_rank": "effective rank (exp entropy of σ)",
    "stable_rank": "stable rank (Σσ² / σ²max)",
    "svd_90_percent_rank": "components for 90 % of Σσ²",
}


def _grid(count, width=4.2, height=3.2, columns=4):
    columns = min(columns, max(count, 1))
    rows = int(np.ceil(max(count, 1) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


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
    fig, axes = _grid(len(kinds))
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


def esd(panels, title, target, reason="no matrix in this layer"):
    """Log-log ESDs with the fitted power law from xmin; panels: (name, eigenvalues, alpha, xmin)
    or (name, eigenvalues, alpha, xmin, status), the status shown where there is no spectrum."""
    if not panels:
        return nothing_to_plot(reason, title, target)
    fig, axes = _grid(len(panels))
    for ax, (name, eigs, alpha, xmin, *status) in zip(axes, panels):
        eigs = np.asarray(eigs, dtype=np.float64)
        eigs = eigs[np.isfinite(eigs) & (eigs > 1e-5)]
        if eigs.size < 2:
            why = status[0] if status and status[0] and status[0] != "ok" else "no spectrum"
            ax.set_title(textwrap.fill(f"{name}: {why}", 45), fontsize=8)
            ax.axis("off")
            continue
        bins = np.logspace(np.log10(eigs.min()), np.log10(eigs.max()), 40)
        density, edges, _ = ax.hist(eigs, bins=bins, density=True, alpha=0.6, color="C0", label="ESD")
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
    ax.set_xticks(x, [name.replace("model.layers.", "L").replace(".weight", "") for name in grid.index],
                  rotation=70, ha="right", fontsize=7)
    ax.set(ylabel="α-Hill after casting", title=title)
    ax.legend(title="precision")
    save(fig, target)


DISTRIBUTION_KINDS = ("box", "violin", "histogram")


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
    labels = [name.replace("model.layers.", "L").replace(".weight", "") for name in names]
    grid = precision.pivot_table(index="matrix", columns="precision", values="alpha_hill", sort=False).loc[names]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.32 * len(names) + 2.2), sharey=True)
    y = np.arange(len(names))
    colours = ["C3" if flag else "C0" for flag in ranked["precision_sensitive"].tolist()[::-1]]
    axes[0].barh(y, ranked["alpha_hill_relative_range"].to_numpy()[::-1], color=colours)
    axes[0].axvline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    axes[0].set_yticks(y, labels, fontsize=7)
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


def depth_overlay(metrics, metric, title, target, reason=None):
    """Per weight type, the metric against relative depth, one line per model (controls dashed)."""
    if lacks(metrics, "relative_depth", "block_type", "model", "control_of", metric):
        return nothing_to_plot(reason or f"no {metric} values: the metrics table is empty", title, target)
    inside = metrics.dropna(subset=["relative_depth"])
    if inside[metric].notna().sum() == 0:
        return nothing_to_plot(reason or f"no finite {metric} value in any transformer block", title, target)
    kinds = measured_kinds(inside, metric)
    fig, axes = _grid(len(kinds))
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


def headmerge_sweep(summary, title, target, reason="the head-merge summary has no rows"):
    """Perplexity and accuracy against threshold: merged, base, and the random control band."""
    if lacks(summary, "threshold", "perplexity", "accuracy"):
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, label in ((axes[0], "perplexity", "perplexity (WikiText-2, log scale)"),
                              (axes[1], "accuracy", "next-token accuracy")):
        t = summary["threshold"]
        ax.plot(t, summary[metric], "o-", color="C0", label="similarity merge")
        ax.axhline(summary[f"base_{metric}"].iloc[0], color="k", ls=":", label="base model")
        if metric == "perplexity":
            mean, std = summary["random_perplexity_mean"], summary["random_perplexity_std"]
            ax.fill_between(t, mean - std, mean + std, color="C3", alpha=0.25, label="random merge (mean ± sd)")
            ax.plot(t, mean, "--", color="C3")
            ax.set_yscale("log")
        else:
            ax.plot(t, summary["random_accuracy_mean"], "--", color="C3", label="random merge (mean)")
        for x, pairs, y in zip(t, summary["merged_pairs"], summary[metric]):
            ax.annotate(f"{pairs}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        ax.set(xlabel="similarity threshold (labels: merged pairs)", ylabel=label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, target)


def headmerge_pairs(summary, layers, title, target, reason="no layer with attention heads to merge"):
    """Thresholds x layers: how many head pairs each threshold merges."""
    if len(layers) == 0 or lacks(summary, "threshold", *[f"pairs_layer_{layer}" for layer in layers]):
        return nothing_to_plot(reason, title, target)
    grid = summary[[f"pairs_layer_{layer}" for layer in layers]].to_numpy()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 0.5 * len(summary) + 2))
    image = ax.imshow(grid, aspect="auto", cmap="magma")
    ax.set_yticks(range(len(summary)), [f"{t:g}" for t in summary["threshold"]])
    ax.set_xticks(range(len(layers)), layers, fontsize=7)
    ax.set(xlabel="layer", ylabel="threshold", title=title)
    fig.colorbar(image, ax=ax, label="merged head pairs")
    save(fig, target)


def similarity_matrices(per_layer: dict, title, target, reason="no layer with attention heads"):
    """Rows: chosen layers; columns: the three similarity measures (cosine, -1..1)."""
    if not per_layer:
        return nothing_to_plot(reason, title, target)
    measures = ("wq", "qk", "ov")
    fig, axes = plt.subplots(len(per_layer), 3, figsize=(12, 3.6 * len(per_layer)), squeeze=False)
    for row, (layer, sims) in enumerate(per_layer.items()):
        for col, measure in enumerate(measures):
            image = axes[row][col].imshow(sims[measure], vmin=-1, vmax=1, cmap="RdBu_r")
            axes[row][col].set(title=f"layer {layer}: {measure} cosine", xlabel="head", ylabel="head")
    fig.colorbar(image, ax=axes, label="cosine similarity", shrink=0.6)
    fig.suptitle(title)
    save(fig, target)


def similarity_histograms(values: dict, title, target, thresholds=()):
    """Distribution of pairwise head similarities per measure, thresholds marked."""
    fig, axes = plt.subplots(1, max(len(values), 1), figsize=(5 * max(len(values), 1), 4), squeeze=False)
    for ax, (measure, v) in zip(axes[0], values.items()):
        ax.hist(v, bins=40, range=(-1, 1), color="C0")
        for t in thresholds:
            ax.axvline(t, color="C3", lw=0.7, ls="--")
        ax.set(xlabel=f"{measure} cosine similarity (dashed: thresholds)", ylabel="head pairs", title=measure)
    if not values:
        axes[0][0].axis("off")
    fig.suptitle(title)
    save(fig, target)


COMPRESS_STYLES = {"uniform": ("s", "C0"), "hint": ("*", "C2"), "alpha": ("*", "C2"), "mirror": ("D", "C1"),
                   "random": ("o", "C7")}


def compress_pareto(summary, x, xlabel, title, target, reason="the experiment has no rows"):
    """Perplexity against the budget (bits per weight, or sparsity) for every evaluated plan; the base as a line."""
    if lacks(summary, x, "perplexity", "kind", "plan"):
        return nothing_to_plot(reason, title, target)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    base = summary[summary["kind"] == "base"]
    if len(base):
        ax.axhline(base["perplexity"].iloc[0], color="k", ls=":", label="base model")
    for kind, (marker, color) in COMPRESS_STYLES.items():
        rows = summary[summary["kind"] == kind]
        if len(rows):
            ax.scatter(rows[x], rows["perplexity"], marker=marker, color=color, s=60 if kind != "random" else 25,
                       alpha=0.9 if kind != "random" else 0.5, label=kind, zorder=3)
    for row in summary[summary["kind"].isin(["uniform", "hint", "alpha", "mirror"])].itertuples():
        ax.annotate(row.plan, (getattr(row, x), row.perplexity), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="perplexity (log scale)")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, target)
