"""Headless matplotlib figures, one module per subject: canvas (writing a figure, the "nothing to
plot" placeholder, the panel grid), spectra, precision, heads, embedding, head_merge,
compression, sensitivity and deltas (a model against its base, compare pairs, series). Each figure
function draws one figure and writes it atomically to `target`, a path or
a list of paths (layout.figure_files, one per report.formats); given nothing to draw it writes a
figure that says "nothing to plot: <reason>" instead of failing."""
