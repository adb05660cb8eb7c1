"""rule detail_tables: the detail tables (blockscope.aggregation.detail_tables), from the
aggregated metrics and heads, the spectra and the deep-dive tables; no spectrum is recomputed."""

import json
from pathlib import Path

import pandas as pd

from blockscope.aggregation import detail_tables as details
from blockscope.io.atomic import write_csv
from blockscope.io.tables import read_frame
from blockscope.runtime.run_step import run_step


def read_down_spectra(paths, matrices) -> pd.DataFrame:
    """The spectra rows of the down projections only (a unit without matrices has an untyped,
    empty file: filtered after reading, not by a Parquet filter)."""
    frames = [read_frame(p, columns=["matrix", "sigma"]) for p in paths] if matrices else []
    frames = [f[f["matrix"].isin(matrices)] for f in frames]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["matrix", "sigma"])


def main(snakemake):
    model, inp, out = snakemake.wildcards.model, snakemake.input, snakemake.output
    metrics, heads = pd.read_parquet(inp.metrics), pd.read_parquet(inp.heads)
    dims = json.loads(Path(inp.dims).read_text())
    write_csv(details.heatmap_statistics(heads), out.heads_heatmap_statistics)
    by_head = details.heads_by_head(heads)
    write_csv(by_head, out.heads_by_head)
    write_csv(details.heads_by_layer(heads), out.heads_by_layer)
    tables = {tuple(pair): pd.read_parquet(path) for pair, path in zip(snakemake.params.pairs, inp.deep_dive)}
    write_csv(details.deep_dive_summaries(tables), out.deep_dive_summary)
    down_matrices = metrics.loc[metrics["block_type"] == "down_proj", "matrix"].tolist() if len(metrics) else []
    down = details.down_projections(read_down_spectra(inp.spectra, down_matrices), metrics)
    write_csv(down, out.down_projections)
    write_csv(details.phase_statistics(metrics, dims["layers"]), out.phase_statistics)
    print(f"[{model}] heads by index: {by_head['rank_class'].value_counts().to_dict()}; "
          f"{len(down)} down projections; {len(tables)} deep dives")


run_step(snakemake, main)
