"""The per-model Markdown report, from the aggregated tables."""

import os

import pandas as pd

from .job_costs import cost_by_rule, costliest_jobs
from .layout import ENERGY_COLUMNS, REPORT_METRICS


def table(frame: pd.DataFrame, digits: int = 3) -> str:
    if frame.empty:
        return "_(none)_\n"
    return frame.to_markdown(index=False, floatfmt=f".{digits}f") + "\n"


def energy_components(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per weight type, the median number of components reaching 50/75/90/95/99 % of sum sigma^2."""
    grouped = metrics.groupby("block_type")
    out = grouped[ENERGY_COLUMNS].median().round(1)
    out.insert(0, "design_rank (median)", grouped["design_rank"].median())
    out.insert(0, "matrices", grouped.size())
    return out.reset_index()


def head_summary_by_layer(heads: pd.DataFrame) -> pd.DataFrame:
    columns = ["qk_effective_rank", "ov_effective_rank", "qk_asymmetry", "qk_complex_fraction"]
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


def cost_section(jobs: pd.DataFrame) -> list:
    """Markdown lines: where the run's time and memory went, per rule and for the costliest jobs."""
    if jobs.empty:
        return []
    total = jobs["s"].sum()
    return ["## Where the time went", "",
            f"{len(jobs)} jobs, {total:.1f} s of job wall time in all (before this report), from Snakemake's "
            "benchmark files (`benchmarks/`); peak RSS in MB.", "",
            table(cost_by_rule(jobs), 2), "", "Longest jobs:", "", table(costliest_jobs(jobs), 2), ""]


def model_report(model, dims, metrics, heads, statistics, phases, hints, precision_summary, embedding,
                 deep_dives: dict, plots: list, target_dir, jobs: pd.DataFrame | None = None,
                 files=()) -> str:
    link = lambda path: os.path.relpath(path, target_dir)  # noqa: E731
    lines = [f"# {model}: spectral anatomy", ""]
    keys = ["source", "model_type", "layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
            "tied_embeddings", "num_experts"]
    lines += ["## Model", "", table(pd.DataFrame([{k: dims.get(k) for k in keys}])), ""]
    status = metrics["status"].value_counts().to_dict()
    lines += [f"{len(metrics)} matrices analysed; status: {status}; compute dtype "
              f"{', '.join(metrics['compute_dtype'].unique())} on {', '.join(metrics['backend'].unique())}.", ""]
    lines += ["## Statistics by weight type", "",
              table(statistics[statistics["metric"].isin(REPORT_METRICS)]), ""]
    lines += ["## Components reaching 50/75/90/95/99 % of the variance (Σσ²)", "", table(energy_components(metrics), 1), ""]
    lines += ["## Phase analysis (early / middle / late thirds of depth)", "", table(phases), ""]
    if len(heads):
        lines += ["## Attention heads", "", "Per layer (means over heads):", "", table(head_summary_by_layer(heads)), "",
                  "Per head (tag: lowest / highest quartile of mean effective rank over the whole model):", "",
                  table(heads[["layer_index", "head", "kv_head", "qk_effective_rank", "qk_eig_effective_rank",
                               "qk_asymmetry", "qk_complex_fraction", "qk_top_dhead_energy", "ov_effective_rank",
                               "tag"]]), ""]
    for name, frame in deep_dives.items():
        lines += [f"### Deep dive: {name}", "", table(frame, 4), ""]
    lines += ["## Precision sweep (α-Hill)", "", table(precision_summary), ""]
    lines += ["## Quantisation hints (a heuristic, not a guarantee)", "",
              "Lower α (heavier tail) keeps more bits, after AlphaPruning; see docs/metrics.md.", "",
              table(hints["suggested_format"].value_counts().rename_axis("format").reset_index()), ""]
    for name, info in embedding.get("matrices", {}).items():
        lines += [f"## Embedding: {name}", "",
                  f"k = {info['k']} by {info['knee_method']} ({info['algorithm']}, seed {info['seed']}); "
                  f"silhouette at k: {info['silhouette_at_k']:.3f}; row norms: mean {info['norm_mean']:.3f}, "
                  f"median {info['norm_median']:.3f}, max {info['norm_max']:.3f}.", ""]
    lines += ["## Plots", ""] + [f"- [{os.path.basename(p)}]({link(p)})" for p in plots] + [""]
    lines += files_section(list(files), target_dir)
    lines += cost_section(jobs if jobs is not None else pd.DataFrame())
    return "\n".join(lines)
