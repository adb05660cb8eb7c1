"""Figures of the compression experiments: perplexity (an encoder: the mean cosine of its sentence
embeddings to the base's) against the budget (bits per weight, or sparsity) of every evaluated
plan, the Pareto view."""

from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, plt, save

COMPRESS_STYLES = {"uniform": ("s", "C0"), "hint": ("*", "C2"), "alpha": ("*", "C2"), "mirror": ("D", "C1"),
                   "random": ("o", "C7")}


def compress_pareto(summary, x, xlabel, title, target, reason="the experiment has no rows"):
    """Perplexity (log scale; an encoder, whose perplexity is NaN: its embedding cosine to the
    base, linear) against the budget (bits per weight, or sparsity) for every evaluated plan; the
    base as a line."""
    if lacks(summary, x, "perplexity", "kind", "plan"):
        return nothing_to_plot(reason, title, target)
    encoder = summary["perplexity"].isna().all() and "embedding_cosine" in summary
    y = "embedding_cosine" if encoder else "perplexity"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    base = summary[summary["kind"] == "base"]
    if len(base):
        ax.axhline(base[y].iloc[0], color="k", ls=":", label="base model")
    for kind, (marker, color) in COMPRESS_STYLES.items():
        rows = summary[summary["kind"] == kind]
        if len(rows):
            ax.scatter(rows[x], rows[y], marker=marker, color=color, s=60 if kind != "random" else 25,
                       alpha=0.9 if kind != "random" else 0.5, label=kind, zorder=3)
    for row in summary[summary["kind"].isin(["uniform", "hint", "alpha", "mirror"])].to_dict("records"):
        ax.annotate(row["plan"], (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not encoder:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="mean cosine to the base's sentence embeddings" if encoder else
           "perplexity (log scale)")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, target)
