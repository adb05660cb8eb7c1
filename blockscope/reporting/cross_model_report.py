"""The cross-model report, results/summary/report.md: each model's findings first (read from the
stacked tables, against its random-init twin where the config has one), then the figures and
tables of results/summary/."""

import os

import pandas as pd

from blockscope.analysis.precision_sensitivity import precision_sensitivity
from blockscope.reporting import findings as fd

TABLES = ("metrics.parquet", "heads.parquet", "precision.parquet", "depth_comparison.csv")


def of_model(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    return frame[frame["model"] == model] if "model" in frame else frame.iloc[:0]


def model_section(model, metrics, precision, headmerge, controls: dict, settings: dict, threshold: float,
                  embedded: str, extra=()) -> list:
    """Markdown lines: one model's findings, its links relative to results/summary/."""
    twins = [twin for twin, of in controls.items() if of == model]
    control = of_model(metrics, twins[0]) if twins else None
    sentences = fd.model_findings(of_model(metrics, model), settings, fd.links(f"../{model}/", embedded),
                                  control=control if control is not None and len(control) else None,
                                  sensitivity=precision_sensitivity(of_model(precision, model), threshold),
                                  sensitivity_threshold=threshold, headmerge=headmerge, extra=extra)
    role = f", the random-init control of {controls[model]}" if model in controls else ""
    lines = [f"### {model} ({fd.md_link('report', f'../{model}/report.md')}{role})", ""]
    return lines + ([f"- {s}" for s in sentences] or ["_(no finding: its tables are empty)_"]) + [""]


def summary_report(models, metrics, precision, headmerge: dict, controls: dict, settings: dict, threshold: float,
                   embedded: str, plots, target_dir, compressed: dict = None, adapters: dict = None,
                   sections=()) -> str:
    """models: every model of the config with weights of its own, in order; headmerge: model -> its
    head-merge summary table (absent when head merging is off); plots: the figures in the embedded
    format; compressed: model -> the compression experiments' findings, the per-matrix sensitivity's
    and those against its base (compression_section, delta_section); adapters: adapter-only model ->
    its findings against its base; sections: Markdown of the compare pairs and series (delta_section,
    series_section)."""
    adapters = adapters or {}
    lines = ["# All models: findings", "", f"{len(models) + len(adapters)} models; each one's findings come first, "
             "then the compare pairs and series, then the cross-model figures and tables (relative depth = "
             "layer / layers).", "", "## Findings", ""]
    for model in models:
        lines += model_section(model, metrics, precision, headmerge.get(model), controls, settings, threshold, embedded,
                               (compressed or {}).get(model, ()))
    for model, sentences in adapters.items():
        lines += [f"### {model} ({fd.md_link('report', f'../{model}/report.md')}, an adapter)", "",
                  *([f"- {s}" for s in sentences] or ["_(no finding: its tables are empty)_"]), ""]
    lines += [section for section in sections]
    lines += ["## Figures", "", *[f"- {fd.md_link(os.path.basename(p), os.path.relpath(p, target_dir))}"
                                  for p in plots], ""]
    lines += ["## Tables", "", *[f"- {fd.md_link(name, name)}" for name in TABLES], ""]
    return "\n".join(lines)
