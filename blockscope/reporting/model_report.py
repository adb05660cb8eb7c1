"""The per-model Markdown report, from the aggregated tables.

Written with whatever exists: an empty or column-less table gives `_(none)_`, never a failure,
and the section "Missing or flagged" lists what earlier stages flagged or could not find
(matrices whose status is not ok, layers without attention, heads with non-finite kernels,
empty deep dives, embedding matrices skipped or not found).
"""

import os
import re

import pandas as pd

from blockscope.analysis.heads import NONFINITE_TAG
from blockscope.layout import ENERGY_COLUMNS, REPORT_METRICS, STATISTICS_ONLY, layer_unit
from blockscope.reporting.detail_sections import detail_report_sections
from blockscope.reporting.findings import findings_section
from blockscope.reporting.markdown import has, table
from blockscope.reporting.measured_costs import cost_by_rule, costliest_jobs

HEAD_REPORT_COLUMNS = ["layer_index", "head", "kv_head", "qk_effective_rank", "qk_eig_effective_rank", "qk_asymmetry",
                       "qk_complex_fraction", "qk_top_dhead_energy", "ov_effective_rank", "tag"]
LISTED = 20  # matrices listed by name in "Missing or flagged" before "... and N more"


def energy_components(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per weight type, the median number of components reaching 50/75/90/95/99 % of sum sigma^2."""
    if not has(metrics, "block_type", "design_rank", *ENERGY_COLUMNS):
        return pd.DataFrame()
    grouped = metrics[metrics["status"] != STATISTICS_ONLY].groupby("block_type") if "status" in metrics \
        else metrics.groupby("block_type")
    out = grouped[ENERGY_COLUMNS].median().round(1)
    out.insert(0, "design_rank (median)", grouped["design_rank"].median())
    out.insert(0, "matrices", grouped.size())
    return out.reset_index()


def head_summary_by_layer(heads: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in ("qk_effective_rank", "ov_effective_rank", "qk_asymmetry", "qk_complex_fraction")
               if c in heads]
    return heads.groupby("layer_index")[columns].mean().reset_index()


def files_section(paths, target_dir) -> list:
    """Markdown lines: the model's data files by kind (folder), with counts and sizes."""
    rows = {}
    for path in map(str, paths):
        kind = os.path.relpath(os.path.dirname(path), target_dir)
        kind = os.path.basename(path) if kind == "." else kind + "/"
        count, size = rows.get(kind, (0, 0))
        rows[kind] = (count + 1, size + os.path.getsize(path))
    if not rows:
        return []
    frame = pd.DataFrame([{"files": kind, "count": n, "MiB": size / 2**20} for kind, (n, size) in rows.items()])
    return ["## Files", "", f"{len(paths)} data files under `{target_dir}` (see docs/outputs.md):", "",
            table(frame, 2), ""]


def status_kind(status: str) -> str:
    """A status without its counts: "non-finite weights (3 NaN, 0 Inf)" -> "non-finite weights"."""
    return re.sub(r"\s*\([^)]*\)", "", str(status))


def flagged_matrices(metrics: pd.DataFrame) -> pd.DataFrame:
    """Matrices whose status is not ok: matrix, block_type, status."""
    if not has(metrics, "status"):
        return pd.DataFrame(columns=["matrix", "block_type", "status"])
    bad = metrics[~metrics["status"].isin(["ok", STATISTICS_ONLY])]
    name = "matrix" if "matrix" in bad else "param_name"
    return pd.DataFrame({"matrix": bad[name], "block_type": bad.get("block_type"), "status": bad["status"]})


def layers_without_attention(heads: pd.DataFrame, dims: dict) -> list:
    """Layer units with no row in the heads table (no attention the naming rules recognise)."""
    found = set(heads["layer_index"].dropna().astype(int)) if has(heads, "layer_index") else set()
    return [layer_unit(i) for i in range(int(dims.get("layers") or 0)) if i not in found]


def nonfinite_heads(heads: pd.DataFrame) -> pd.DataFrame:
    """(layer_index, head) of heads whose QK or OV metrics are NaN for non-finite weights."""
    if not has(heads, "layer_index", "head"):
        return pd.DataFrame(columns=["layer_index", "head"])
    tags = [heads[c] for c in ("tag", "layer_tag") if c in heads]
    flagged = pd.concat([t == NONFINITE_TAG for t in tags], axis=1).any(axis=1) if tags else False
    nan = heads[[c for c in ("qk_effective_rank", "ov_effective_rank") if c in heads]].isna().any(axis=1)
    return heads.loc[flagged | nan, ["layer_index", "head"]].reset_index(drop=True)


def missing_section(metrics, heads, dims, embedding: dict, deep_dives: dict) -> list:
    """Markdown lines: what earlier stages flagged or could not find, and why."""
    lines = ["## Missing or flagged", ""]
    flagged = flagged_matrices(metrics)
    if len(flagged):
        counts = flagged["status"].map(status_kind).value_counts().rename_axis("status").reset_index(name="matrices")
        matrices = int((metrics["status"] != STATISTICS_ONLY).sum())
        lines += [f"{len(flagged)} of {matrices} matrices have a status other than ok (their metrics are NaN "
                  "or partial):", "", table(counts), ""]
        listed = flagged.head(LISTED)
        lines += [table(listed)] + ([f"... and {len(flagged) - LISTED} more (see metrics.csv, column status)", ""]
                                    if len(flagged) > LISTED else [""])
    elif not has(metrics, "status"):
        lines += ["- No matrix was measured: the metrics table is empty.", ""]
    lines += [f"- {warning.rstrip('.')}." for warning in dims.get("warnings", [])]  # the inventory's (model.json)
    if dims.get("warnings"):
        lines += [""]
    missing = layers_without_attention(heads, dims)
    if missing:
        lines += [f"- No attention heads in {len(missing)} of {dims.get('layers')} layers "
                  f"({', '.join(missing)}): no q, k, v and o projections that the naming rules recognise.", ""]
    bad_heads = nonfinite_heads(heads)
    if len(bad_heads):
        pairs = ", ".join(f"layer {int(r.layer_index)} head {int(r.head)}" for r in bad_heads.itertuples())
        lines += [f"- Heads with non-finite kernel factors (their QK or OV metrics are NaN): {pairs}.", ""]
    for name, frame in deep_dives.items():
        if not len(frame):
            lines += [f"- Deep dive {name} is empty: {frame.attrs.get('reason', 'no eigenvalues')}.", ""]
    matrices = embedding.get("matrices", {})
    if not matrices:
        lines += [f"- Embedding: {embedding.get('reason', 'no token embedding found')}.", ""]
    for name, info in matrices.items():
        if info.get("status", "ok") != "ok":
            lines += [f"- Embedding {name} skipped: {info.get('reason', info.get('status'))}.", ""]
        elif info.get("dropped_rows"):
            lines += [f"- Embedding {name}: {info['dropped_rows']} of {info.get('total_rows')} rows have NaN or "
                      "Inf values and were left out of the clustering.", ""]
    if len(lines) == 2:
        lines += ["Nothing: every matrix has status ok, every layer has attention heads, every embedding was "
                  "clustered.", ""]
    return lines


def quantization_section(hints: pd.DataFrame) -> list:
    """Markdown lines: the rule actually used (from the hints' basis) and the count per format."""
    lines = ["## Quantisation hints (a heuristic, not a guarantee)", ""]
    if not has(hints, "suggested_format", "basis"):
        return lines + [table(pd.DataFrame()), ""]
    formats = hints["suggested_format"].fillna("keep (no usable spectrum)")
    return lines + [f"Rule: {'; '.join(hints['basis'].dropna().unique())}. A value exactly on a threshold joins "
                    "the band above it. Rows without a usable spectrum (status not ok, or 1-D parameters) get no "
                    "format: keep as stored. See docs/metrics.md.", "",
                    table(formats.value_counts().rename_axis("format").reset_index()), ""]


def cost_section(jobs: pd.DataFrame) -> list:
    """Markdown lines: where the run's time and memory went, per rule and for the costliest jobs."""
    if jobs.empty:
        return []
    total = jobs["s"].sum()
    return ["## Where the time went", "",
            f"{len(jobs)} jobs, {total:.1f} s of job wall time in all (before this report), from Snakemake's "
            "benchmark files (`benchmarks/`); peak RSS in MB.", "",
            table(cost_by_rule(jobs), 2), "", "Longest jobs:", "", table(costliest_jobs(jobs), 2), ""]


SENSITIVE_LISTED = 10  # matrices listed by relative range in "Precision sensitivity"


def sensitivity_section(wide: pd.DataFrame | None, threshold) -> list:
    """Markdown lines: how many matrices are precision-sensitive, and the top ones by relative range
    (from precision_alpha_hill.csv)."""
    lines = ["## Precision sensitivity", ""]
    if not has(wide, "layer_name", "alpha_hill_relative_range", "precision_sensitive"):
        return lines + ["_(none: no precision sweep)_", ""]
    finite = wide.dropna(subset=["alpha_hill_relative_range"])
    sensitive = int(wide["precision_sensitive"].astype(str).str.lower().eq("true").sum())
    lines += [f"{sensitive} of {len(finite)} matrices are precision-sensitive: the relative range of their "
              f"α-Hill across the swept precisions, (max - min) / |mean|, is above {threshold:g} "
              f"(`precision.sensitivity_threshold`). {len(wide) - len(finite)} matrices have no finite "
              "α-Hill at some precision and are not ranked.", ""]
    if len(finite):
        alphas = [c for c in wide.columns if c.startswith("alpha_") and not c.startswith("alpha_hill")]
        top = finite.sort_values("alpha_hill_relative_range", ascending=False, kind="stable").head(SENSITIVE_LISTED)
        lines += [f"Top {len(top)} by relative range:", "",
                  table(top[["layer_name", "category", *alphas, "alpha_hill_range", "alpha_hill_relative_range",
                             "precision_sensitive"]], 4), ""]
    return lines


def svd_methods(metrics: pd.DataFrame) -> str:
    """", SVD method gesdd, gram": the methods that computed the spectra ("" for a table without them)."""
    used = [m for m in metrics.get("svd_method", pd.Series(dtype=str)).dropna().unique() if m != "none"]
    return f", SVD method {', '.join(used)}" if used else ""


def model_report(model, dims, metrics, heads, statistics, phases, hints, precision_summary, embedding,
                 deep_dives: dict, plots: list, target_dir, jobs: pd.DataFrame | None = None,
                 files=(), precision_wide: pd.DataFrame | None = None, sensitivity_threshold: float = 0.05,
                 details: dict | None = None, compress: list = (), findings=(), deltas: str = "") -> str:
    """findings: the sentences of blockscope.reporting.findings that open the report; compress: the lines of
    the compression experiments' section (blockscope.reporting.compression_section.compress_section);
    deltas: the section on the model against its base (blockscope.reporting.delta_section), when it has one."""
    link = lambda path: os.path.relpath(path, target_dir)  # noqa: E731
    lines = [f"# {model}: spectral anatomy", "", *findings_section(findings)]
    keys = ["source", "model_type", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
            "tied_embeddings", "num_experts"]
    lines += ["## Model", "", table(pd.DataFrame([{k: dims.get(k) for k in keys}])), ""]
    if has(metrics, "status", "compute_dtype", "backend"):
        status = metrics["status"].map(status_kind).value_counts().to_dict()
        vectors = int((metrics["status"] == STATISTICS_ONLY).sum())
        lines += [f"{len(metrics) - vectors} matrices analysed (and {vectors} 1-D parameters, statistics only); "
                  f"status: {status}; compute dtype "
                  f"{', '.join(metrics['compute_dtype'].unique())} on {', '.join(metrics['backend'].unique())}"
                  f"{svd_methods(metrics)}.", ""]
    else:
        lines += ["No matrix analysed.", ""]
    lines += missing_section(metrics, heads, dims, embedding, deep_dives)
    lines += ["## Statistics by weight type", "",
              table(statistics[statistics["metric"].isin(REPORT_METRICS)] if has(statistics, "metric")
                    else pd.DataFrame()), ""]
    lines += ["## Components reaching 50/75/90/95/99 % of the variance (Σσ²)", "",
              table(energy_components(metrics), 1), ""]
    lines += ["## Phase analysis (early / middle / late thirds of depth)", "", table(phases), ""]
    if has(heads, "layer_index", "head"):
        lines += ["## Attention heads", "", "Per layer (means over heads):", "",
                  table(head_summary_by_layer(heads)), "",
                  "Per head (tag: lowest / highest quartile of mean effective rank over the whole model):", "",
                  table(heads[[c for c in HEAD_REPORT_COLUMNS if c in heads]]), ""]
    for name, frame in deep_dives.items():
        empty = f"_(empty: {frame.attrs['reason']})_\n" if not len(frame) and frame.attrs.get("reason") else None
        lines += [f"### Deep dive: {name}", "", empty or table(frame, 4), ""]
    lines += ["## Precision sweep (α-Hill)", "", table(precision_summary), ""]
    lines += sensitivity_section(precision_wide, sensitivity_threshold)
    lines += quantization_section(hints)
    for name, info in embedding.get("matrices", {}).items():
        if info.get("status", "ok") != "ok" or "k" not in info:
            lines += [f"## Embedding: {name}", "", f"Skipped: {info.get('reason', info.get('status'))}.", ""]
            continue
        lines += [f"## Embedding: {name}", "",
                  f"k = {info['k']} by {info['knee_method']} ({info['algorithm']}, seed {info['seed']}); "
                  f"silhouette at k: {info['silhouette_at_k']:.3f}; row norms: mean {info['norm_mean']:.3f}, "
                  f"median {info['norm_median']:.3f}, max {info['norm_max']:.3f}.", ""]
    lines += detail_report_sections(details or {}, metrics, plots, link)
    lines += [deltas, ""] if deltas else []
    lines += list(compress)
    lines += ["## Plots", ""] + [f"- [{os.path.basename(p)}]({link(p)})" for p in plots] + [""]
    lines += files_section(list(files), target_dir)
    lines += cost_section(jobs if jobs is not None else pd.DataFrame())
    return "\n".join(lines)
