"""Figures of the head-merge experiment: perplexity and accuracy against the similarity threshold,
merged pairs per layer and threshold, the heads' similarity matrices and their histograms, and,
per threshold, the original vs merged vs random comparison and the merged pairs by layer."""

import numpy as np

from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, plt, save


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
