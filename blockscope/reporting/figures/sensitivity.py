"""Figures of the per-matrix sensitivity: what predicts it (Spearman's rho of every metric and
baseline with the measured KL, with its bootstrap interval, overall and per block type; a dot
plot per perturbation) and the best predictor against the KL, matrix by matrix."""

import numpy as np

from blockscope.compression.metric_prediction import BASELINES, best_predictor, metric_column, metric_label
from blockscope.layout import ALL_TYPES
from blockscope.reporting.figures.canvas import lacks, nothing_to_plot, panel_grid, plt, save

FALLBACK_METRICS = ("alpha", "alpha_hill")  # drawn when no metric's interval excludes zero
CORRELATION_COLUMNS = ("perturbation", "metric", "block_type", "matrices", "spearman", "ci_low", "ci_high")


def type_colors(types) -> dict:
    """One colour per block type, the same in every panel."""
    return {t: f"C{i % 10}" for i, t in enumerate(sorted(types))}


def correlation_dots(correlations, title, target, reason="no per-matrix sensitivity was measured"):
    """Per perturbation a panel: per metric (rows; the plain baselines below a line) rho with its
    interval over all matrices (black) and within each block type (colours); groups below 5
    measured matrices have no dot."""
    if lacks(correlations, *CORRELATION_COLUMNS) or not np.isfinite(correlations["spearman"]).any():
        return nothing_to_plot(reason, title, target)
    perturbations = list(dict.fromkeys(correlations["perturbation"]))
    metrics = list(dict.fromkeys(correlations["metric"]))
    types = [t for t in dict.fromkeys(correlations["block_type"]) if t != ALL_TYPES]
    colors = type_colors(types)
    offsets = dict(zip(types, np.linspace(-0.35, 0.35, len(types) + 2)[1:-1]))
    fig, axes = panel_grid(len(perturbations), width=6.5, height=0.45 * len(metrics) + 1.8, columns=2)
    for ax, perturbation in zip(axes, perturbations):
        rows = correlations[correlations["perturbation"] == perturbation]
        for y, metric in enumerate(metrics):
            for row in rows[rows["metric"] == metric].itertuples():
                if not np.isfinite(row.spearman):
                    if row.block_type == ALL_TYPES:
                        ax.text(0.02, y, "no rho: constant, or under 5 measured", fontsize=7, color="0.4",
                                va="center")
                    continue
                overall = row.block_type == ALL_TYPES
                at = y + (0 if overall else offsets.get(row.block_type, 0))
                ax.errorbar(row.spearman, at, xerr=[[row.spearman - row.ci_low], [row.ci_high - row.spearman]],
                            fmt="o", ms=6 if overall else 3.5, lw=1.6 if overall else 0.8,
                            color="k" if overall else colors[row.block_type], zorder=3 if overall else 2)
        counts = rows[rows["block_type"] == ALL_TYPES].set_index("metric")["matrices"]
        ax.set_yticks(range(len(metrics)), [f"{metric_label(m)} (n={int(counts.get(m, 0))})" for m in metrics],
                      fontsize=8)
        baselines = [i for i, m in enumerate(metrics) if m in BASELINES]
        if baselines and len(baselines) < len(metrics):
            ax.axhline(min(baselines) - 0.5, color="grey", lw=0.6)
        ax.axvline(0, color="grey", ls=":", lw=0.8)
        ax.set(xlim=(-1.05, 1.05), ylim=(len(metrics) - 0.5, -0.5), title=perturbation,
               xlabel="Spearman's rho with the measured KL (bootstrap interval)")
    handles = [plt.Line2D([], [], marker="o", color="k", ls="", label="all matrices")]
    handles += [plt.Line2D([], [], marker="o", ms=4, color=colors[t], ls="", label=t) for t in types]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.02 * (len(handles) // 6)))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save(fig, target)


def scatter_metric(correlations, matrices, perturbation: str):
    """The metric a scatter shows: the best predictor of this perturbation, else alpha (or alpha_hill)."""
    best = best_predictor(correlations, perturbation=perturbation)
    if best is not None:
        return best, True
    return next((m for m in FALLBACK_METRICS if m in matrices), None), False


def rho_label(correlations, perturbation: str, metric: str) -> str:
    """rho = 0.61 [0.32, 0.80], n = 21 over all matrices; or the count alone."""
    rows = correlations[(correlations["perturbation"] == perturbation) & (correlations["metric"] == metric)
                        & (correlations["block_type"] == ALL_TYPES)]
    if rows.empty:
        return ""
    row = rows.iloc[0]
    if not np.isfinite(row["spearman"]):
        return f"n = {int(row['matrices'])} measured"
    return f"rho = {row['spearman']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}], n = {int(row['matrices'])}"


def best_metric_scatter(matrices, correlations, title, target, reason="no per-matrix sensitivity was measured"):
    """Per perturbation a panel: the best predictor (or alpha when none predicts) against the KL of
    each matrix, measured ones coloured by block type, estimated ones (the proxy) hollow grey."""
    if lacks(matrices, "block_type") or lacks(correlations, *CORRELATION_COLUMNS):
        return nothing_to_plot(reason, title, target)
    perturbations = [p for p in dict.fromkeys(correlations["perturbation"]) if f"{p}_kl" in matrices]
    if not perturbations:
        return nothing_to_plot(reason, title, target)
    colors = type_colors(matrices["block_type"].dropna().astype(str).unique())
    fig, axes = panel_grid(len(perturbations), width=5.5, height=4.2, columns=3)
    for ax, perturbation in zip(axes, perturbations):
        metric, predicts = scatter_metric(correlations, matrices, perturbation)
        column = metric_column(metric, perturbation) if metric else None
        if column not in matrices:
            ax.axis("off")
            continue
        measured = matrices[f"{perturbation}_measured"].fillna(False).astype(bool)
        kl = matrices[f"{perturbation}_kl"].astype(float)
        estimated = matrices[~measured]
        ax.scatter(estimated[column], kl[~measured], s=14, facecolors="none", edgecolors="0.6", lw=0.7,
                   label="estimated (proxy)")
        for block_type, rows in matrices[measured].groupby("block_type"):
            ax.scatter(rows[column], kl[rows.index], s=24, color=colors[str(block_type)], label=str(block_type),
                       zorder=3)
        if (kl.dropna() > 0).all() and kl.notna().any():
            ax.set_yscale("log")
        verdict = "best predictor" if predicts else "no metric's interval excludes zero"
        ax.set(xlabel=metric_label(metric), ylabel=f"KL to the base, {perturbation} alone",
               title=f"{perturbation}: {verdict}\n{rho_label(correlations, perturbation, metric)}")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, target)
