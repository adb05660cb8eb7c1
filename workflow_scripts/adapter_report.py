"""rule adapter_report: results/{model}/report.md of an adapter-only model (source peft, merged false):
what its update does to each matrix of the base, from its factors."""

import json
import os

import pandas as pd

from blockscope import pair_layout
from blockscope.io.atomic import atomic_path
from blockscope.reporting.delta_section import delta_findings, delta_section
from blockscope.reporting.findings import findings_section
from blockscope.runtime.run_step import run_step

PROVENANCE_KEYS = ("source", "path", "repo_id", "revision", "base", "peft_type", "r", "lora_alpha", "scaling",
                   "target_modules")


def main(snakemake):
    model, base, inp = snakemake.wildcards.model, snakemake.params.base, snakemake.input
    target_dir = os.path.dirname(snakemake.output[0])
    deltas, by_layer = pd.read_parquet(inp.deltas), pd.read_csv(inp.by_layer)
    figures = {os.path.basename(path).rsplit(".", 1)[0]: os.path.relpath(path, target_dir) for path in inp.plots}
    provenance = json.loads(open(os.path.join(inp.source, "source.json")).read())
    source = ", ".join(f"{key} {provenance[key]}" for key in PROVENANCE_KEYS if provenance.get(key) not in (None, ""))
    csv = os.path.relpath(pair_layout.DELTAS_CSV.format(model=model), target_dir)
    lines = [f"# {model}: a LoRA adapter of {base}", "",
             *findings_section(delta_findings(deltas, by_layer, level=snakemake.params.level)),
             "## Adapter", "", f"{source}.", "",
             f"An adapter has no weights of its own: this report is its update dW = scale B A against "
             f"[{base}](../{base}/report.md), per matrix, from its factors (never the dense product); "
             f"the numbers: [deltas.csv]({csv}).",
             "", delta_section(deltas, by_layer, figures, model, base, level=snakemake.params.level,
                               with_findings=False)]
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


run_step(snakemake, main)
