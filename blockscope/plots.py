"""Headless matplotlib figures. Each function draws one figure and writes it atomically."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_path  # noqa: E402


def save(fig, target):
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def head_eigenvalues(table, title, target):
    """Complex-plane scatter, sorted magnitudes and cumulative energy of one head's QK kernel."""
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
    for level in (0.5, 0.9, 0.99):
        ax.axhline(level, color="grey", lw=0.5, ls="--")
    ax.set(xlabel="number of eigenvalues", ylabel="share of Σ|λ|²", ylim=(0, 1.02),
           title="cumulative eigenvalue energy")
    fig.suptitle(title)
    save(fig, target)


def embedding_elbow(elbows: dict, chosen: dict, title, target):
    """Inertia and silhouette against k, one column per analysed matrix."""
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
    save(fig, target)


def embedding_pca(points: dict, title, target):
    """The sampled rows on their first two principal components, coloured by cluster."""
    fig, axes = plt.subplots(1, len(points), figsize=(6.5 * len(points), 5.5), squeeze=False)
    for ax, (name, frame) in zip(axes[0], points.items()):
        ax.scatter(frame["pc1"], frame["pc2"], c=frame["cluster"], cmap="tab20", s=3, alpha=0.6)
        ax.set(xlabel="PC 1", ylabel="PC 2", title=f"{name}: {len(frame)} sampled rows, colour = cluster")
    fig.suptitle(title)
    save(fig, target)
