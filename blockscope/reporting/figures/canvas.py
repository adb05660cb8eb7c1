"""What every figure shares: the headless matplotlib backend, writing a figure atomically in the
formats its paths name, the "nothing to plot: <reason>" placeholder, the test for a table without
what a figure needs, the grid of panels, and a matrix's short label."""

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: jobs run on nodes without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from blockscope.io.atomic import atomic_path  # noqa: E402


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


def panel_grid(count, width=4.2, height=3.2, columns=4):
    """A figure of `count` panels, at most `columns` a row; the axes in reading order, the unused ones hidden."""
    columns = min(columns, max(count, 1))
    rows = int(np.ceil(max(count, 1) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def short_name(matrix: str) -> str:
    """model.layers.3.mlp.down_proj.weight -> L3.mlp.down_proj (a tick or legend label)."""
    return matrix.replace("model.layers.", "L").removesuffix(".weight")
