"""Figures of the embedding clustering: the k-means elbow (inertia and silhouette against k) and
the sampled rows on their first two principal components."""

from blockscope.reporting.figures.canvas import nothing_to_plot, plt, save


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
