"""rule plan: predicted seconds and memory of every per-unit job, from the inventory."""

import json
import os
import sys

import pandas as pd

from blockscope.io.atomic import write_json
from blockscope.planning.model_plan import plan_document, plan_model, total_line
from blockscope.planning.throughput_cache import throughput
from blockscope.runtime.run_step import run_step

TERMINAL = sys.stdout  # run_step sends stdout to the log; the total goes to the terminal as well


def main(snakemake):
    model, options = snakemake.wildcards.model, dict(snakemake.params.options)
    with open(snakemake.input.dims) as fh:
        dims = json.load(fh)
    speed = throughput(options["backend"], options["device"])
    jobs = plan_model(pd.read_parquet(snakemake.input.inventory), dims, speed, options["method"],
                      options["compute_dtype"], options["precisions"], dict(snakemake.params.selected),
                      deltas=options.get("deltas", False), adapter_only=options.get("adapter_only", False),
                      diagnostics=options["diagnostics"], vectors=options["vectors"])
    document = plan_document(model, jobs, speed, options["method"], cores=os.cpu_count())
    write_json(document, snakemake.output[0])
    print(jobs.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(total_line(model, document))
    print(total_line(model, document), file=TERMINAL, flush=True)


run_step(snakemake, main)
