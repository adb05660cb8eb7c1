"""Figures of the compression experiments: perplexity (an encoder: the mean cosine of its sentence
embeddings to the base's) against the budget (bits per weight, or sparsity) of every evaluated
plan, the Pareto view."""

from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, plt, save

COMPRESS_STYLES = {"uniform": ("s", "C0"), "hint": ("*", "C2"), "alpha": ("*", "C2"), "mirror": ("D", "C1"),
                   "random": ("o", "C7")}
LABELLED = ("uniform", "hint", "alpha", "mirror")  # the plans named beside their marker
# The low-rank experiment: its three spectral allocations, their controls, LASER's plans and their controls.
LOWRANK_STYLES = {"uniform": ("s", "C0"), "energy": ("*", "C2"), "alpha": ("*", "C3"), "effective_rank": ("*", "C4"),
                  "mirror": ("D", "C1"), "random": ("o", "C7"), "laser": ("^", "C5"), "laser_control": ("x", "C7")}
LOWRANK_LABELLED = ("uniform", "energy", "alpha", "effective_rank", "mirror", "laser")


def compress_pareto(summary, x, xlabel, title, target, reason="the experiment has no rows", styles=None,
                    labelled=LABELLED):
    """Perplexity (log scale; an encoder, whose perplexity is NaN: its embedding cosine to the
    base, linear) against the budget (bits per weight, sparsity or parameters kept) for every
    evaluated plan, a marker per kind (styles: kind -> (marker, colour), COMPRESS_STYLES unless
    given), the plans of the `labelled` kinds named; the base as a line."""
    styles = COMPRESS_STYLES if styles is None else styles
    if lacks(summary, x, "perplexity", "kind", "plan"):
        return nothing_to_plot(reason, title, target)
    encoder = summary["perplexity"].isna().all() and "embedding_cosine" in summary
    y = "embedding_cosine" if encoder else "perplexity"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    base = summary[summary["kind"] == "base"]
    if len(base):
        ax.axhline(base[y].iloc[0], color="k", ls=":", label="base model")
    for kind, (marker, color) in styles.items():
        rows = summary[summary["kind"] == kind]
        faint = kind in ("random", "laser_control")
        if len(rows):
            ax.scatter(rows[x], rows[y], marker=marker, color=color, s=25 if faint else 60,
                       alpha=0.5 if faint else 0.9, label=kind, zorder=3)
    for row in summary[summary["kind"].isin(list(labelled))].to_dict("records"):
        ax.annotate(row["plan"], (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not encoder:
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel="mean cosine to the base's sentence embeddings" if encoder else
           "perplexity (log scale)")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    save(fig, target)
