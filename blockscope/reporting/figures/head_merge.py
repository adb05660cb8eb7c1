"""Figures of the head-merge experiment: perplexity and accuracy against the similarity threshold,
merged pairs per layer and threshold, the heads' similarity matrices and their histograms, and,
per threshold, the original vs merged vs random comparison and the merged pairs by layer."""

import numpy as np

from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, plt, save


def control_range(summary, metric="perplexity"):
    """The random controls' (low, high) per row: their min and max perplexity, NaN where a row has
    none or the summary predates them (no spread is invented from a few controls' sd)."""
    columns = [f"random_{metric}_min", f"random_{metric}_max"]
    if not all(c in summary for c in columns):
        return np.full(len(summary), np.nan), np.full(len(summary), np.nan)
    return (np.asarray(summary[c], dtype=np.float64) for c in columns)


# The two panels of a summary: a causal LM's perplexity and accuracy; an encoder's (its perplexity
# NaN) mean cosine to the base's sentence embeddings and top-1 retrieval agreement, 1 for the base.
PANELS = {"next-token": (("perplexity", "perplexity (WikiText-2, log scale)"), ("accuracy", "next-token accuracy")),
          "encoder": (("embedding_cosine", "mean cosine to the base's sentence embeddings"),
                      ("retrieval_agreement", "top-1 retrieval agreement with the base"))}


def panels(summary) -> tuple:
    """PANELS of the summary's kind (a row dict or a table)."""
    cosine = summary.get("embedding_cosine") if hasattr(summary, "get") else None
    filled = cosine is not None and np.isfinite(np.asarray(cosine, dtype=np.float64)).any()
    return PANELS["encoder" if filled else "next-token"]


def base_value(summary, metric):
    """The base model's value of a panel's metric: its base_ column, 1 for an encoder's (itself)."""
    if f"base_{metric}" in summary:
        values = summary[f"base_{metric}"]
        return values if np.ndim(values) == 0 else values.iloc[0]
    return 1.0


def headmerge_sweep(summary, title, target, reason="the head-merge summary has no rows"):
    """Perplexity and accuracy (an encoder: embedding cosine and retrieval agreement) against
    threshold: merged, base, and the random controls (that remove as many heads per layer) as
    their min-max range and mean, where the summary has them."""
    if lacks(summary, "threshold", "perplexity", "accuracy"):
        return nothing_to_plot(reason, title, target)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, label) in zip(axes, panels(summary)):
        t = summary["threshold"]
        ax.plot(t, summary[metric], "o-", color="C0", label="similarity merge")
        ax.axhline(base_value(summary, metric), color="k", ls=":", label="base model")
        if metric == "perplexity":
            low, high = control_range(summary)
            ax.fill_between(t, low, high, color="C3", alpha=0.25, label="random controls (min-max)")
            ax.plot(t, summary["random_perplexity_mean"], "--", color="C3", label="random controls (mean)")
            ax.set_yscale("log")
        elif metric == "accuracy":  # (an encoder's controls are in its comparisons table)
            ax.plot(t, summary["random_accuracy_mean"], "--", color="C3", label="random controls (mean)")
        removed = summary["heads_removed"] if "heads_removed" in summary else summary["merged_pairs"]
        for x, count, y in zip(t, removed, summary[metric]):
            ax.annotate(f"{count}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        what = "heads removed" if "heads_removed" in summary else "merged pairs"
        ax.set(xlabel=f"similarity threshold (labels: {what})", ylabel=label)
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
    """One threshold: perplexity and next-token accuracy (an encoder: embedding cosine and
    retrieval agreement) of the original model, the merged one and the random controls (their
    mean; for perplexity, whiskers to their min and max)."""
    if lacks(row, "perplexity", "accuracy", "base_perplexity", "base_accuracy"):
        return nothing_to_plot("the head-merge summary has no row for this threshold", title, target)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    controls = row.get("random_controls")
    controls = "random controls" if controls is None else f"{int(controls)} random controls"
    for ax, (metric, label) in zip(axes, panels(row)):
        values = [base_value(row, metric), row[metric], row.get(f"random_{metric}_mean", np.nan)]
        low, high = (row.get(f"random_{metric}_{end}", np.nan) for end in ("min", "max"))
        spread = ", min-max" if np.isfinite(np.asarray([low, high], dtype=np.float64)).all() else ""
        labels = ["original", "merged", f"{controls}\n(mean{spread})"]
        whiskers = np.nan_to_num([[0, 0, values[2] - low], [0, 0, high - values[2]]])
        bars = ax.bar(labels, values, yerr=whiskers, capsize=4, color=["grey", "C0", "C3"])
        changes = ["", *(relative_change(v, values[0]) for v in values[1:])]
        texts = [f"{v:.4g}" + (f"\n({change})" if change else "") for v, change in zip(values, changes)]
        ax.bar_label(bars, labels=texts, fontsize=8, padding=3)
        ax.margins(y=0.15)
        ax.set(ylabel=f"{metric} (WikiText-2)" if metric == "perplexity" else label, title=metric.replace("_", " "))
    removed = f", {int(row['heads_removed'])} heads removed" if "heads_removed" in row else ""
    fig.suptitle(f"{title}: {int(row.get('merged_pairs', 0))} head pairs merged{removed}")
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
