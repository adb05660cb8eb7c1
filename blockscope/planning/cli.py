"""blockscope-plan (python -m blockscope.planning.cli): what a run will cost, from a transformers
config.json (no weights needed) or from an inventoried results/{model} folder, on this machine
and on a published GPU, printed as a table per rule; --json writes the full plan."""

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd

from blockscope.io.atomic import write_json
from blockscope.planning.devices import DEFAULT_DEVICE, DEVICES
from blockscope.planning.job_start import GPU_RULES, PRICED_RULES
from blockscope.planning.model_plan import hms, one_gpu_wall_s, plan_document, plan_model, rule_totals
from blockscope.planning.pricing import DEFAULT_METHOD, DIAGNOSTICS, METHODS, VECTORS
from blockscope.planning.throughput_cache import cache_path, throughput

BACKENDS = ("cpu", "cuda")
HERE = "here"  # the column label of this machine
LABEL_WIDTH = max(len(HERE), *map(len, DEVICES)) + 1


def measured(backend: str, device: str | None = None):
    """throughput(backend, device), saying so on stderr when this machine is measured first."""
    path = cache_path(backend, device)
    if not path.exists():
        print(f"measuring this machine once for {device or backend} (seconds; cached in {path})", file=sys.stderr)
    return throughput(backend, device)


def model_name(config_path: Path) -> str:
    """A config's model name for the table: its file's stem, or its folder's name for a config.json."""
    return config_path.parent.resolve().name if config_path.stem == "config" else config_path.stem


def read_inventory(args) -> tuple:
    """(inventory, dims) from --config (built on torch's meta device) or --results."""
    if args.config:
        from blockscope.planning.config_inventory import inventory_from_config

        path = Path(args.config)
        return inventory_from_config(json.loads(path.read_text()), model=model_name(path))
    results = Path(args.results)
    dims = json.loads((results / "model.json").read_text())
    return pd.read_parquet(results / "inventory.parquet"), dims


def text_table(header: list, rows: list) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in [header, *rows])


def plan_table(plans: dict) -> str:
    """Per rule with jobs and in total: the jobs, then per machine (label -> jobs frame) the
    predicted job-seconds and the largest job's memory."""
    totals = {label: rule_totals(jobs) for label, jobs in plans.items()}
    first = next(iter(totals.values()))
    header = ["rule", "jobs"] + [cell for label in plans for cell in (f"{label} s", f"{label} peak MB")]
    rows = [[rule, int(first.loc[rule, "jobs"])] +
            [cell for table in totals.values()
             for cell in (f"{table.loc[rule, 'seconds']:,.1f}", f"{table.loc[rule, 'peak_mem_mb']:,.0f}")]
            for rule in first.index]
    return text_table(header, rows)


def describe(label: str, document: dict) -> str:
    """Which machine a column prices, and on what basis."""
    t = document["throughput"]
    if t["basis"] == "measured":
        what = f"{t['device']}, this machine ({document['backend']}, rates measured {t['measured_at']})"
    else:
        on_cpu = ", ".join(rule for rule in PRICED_RULES if rule not in GPU_RULES)
        what = f"{t['device']} (published peaks x stated efficiencies; {on_cpu} at this CPU's rates)"
    return f"  {label + ':':<{LABEL_WIDTH}} {what}"


def total_lines(label: str, jobs: pd.DataFrame, document: dict, cores: int) -> str:
    totals = document["totals"]
    if document["backend"] == "cuda":
        where = f"~{hms(one_gpu_wall_s(jobs, cores))} wall on 1 GPU ({', '.join(GPU_RULES)} one job at a time) " \
                f"and {cores} cores"
    else:
        where = f"~{hms(totals['wall_s'])} wall on {cores} cores"
    return f"total {label + ':':<{LABEL_WIDTH}} {totals['seconds']:,.1f} job-seconds, {where}, " \
           f"peak job {totals['peak_mem_mb']:,.0f} MB"


def main(argv=None):
    """blockscope-plan: predict the per-unit jobs of a run from a transformers config.json (no
    weights needed) or from a results/{model} folder, on this machine and on a published GPU;
    prints a table per rule, and with --json the full plan (every job)."""
    parser = argparse.ArgumentParser(prog="blockscope-plan", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a transformers config.json")
    source.add_argument("--results", help="a results/{model} folder with inventory.parquet and model.json")
    parser.add_argument("--backend", choices=BACKENDS, default="cpu",
                        help="this machine's backend (cuda: its visible GPU, measured)")
    parser.add_argument("--device", choices=[*sorted(DEVICES), "none"], default=DEFAULT_DEVICE,
                        help=f"the GPU priced beside this machine from its published rates (default {DEFAULT_DEVICE}; "
                             "none: this machine only)")
    parser.add_argument("--method", choices=(*METHODS, "auto"), default=DEFAULT_METHOD,
                        help=f"svd_method (default {DEFAULT_METHOD}, the workflow's)")
    parser.add_argument("--precisions", default="fp32,fp16,bf16",
                        help="the precision sweep's formats, comma-separated (config precision.precisions)")
    parser.add_argument("--compute-dtype", default="float32", help="the SVD's dtype (config compute_dtype)")
    deltas = parser.add_mutually_exclusive_group()
    deltas.add_argument("--deltas", action="store_true",
                        help="price rule deltas too: the model against a base of the same shapes (config base:)")
    deltas.add_argument("--adapter-only", action="store_true",
                        help="price a peft adapter (merged false) on these shapes, the base's: its deltas jobs alone")
    parser.add_argument("--diagnostics", action=argparse.BooleanOptionalAction, default=DIAGNOSTICS,
                        help="price the anatomy's diagnostics part (config diagnostics.enabled; default on)")
    parser.add_argument("--vectors", action="store_true", default=VECTORS,
                        help="price the diagnostics' singular vectors too (config diagnostics.vectors; default off)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(),
                        help="cores the jobs share, for the wall-time estimate (default: this machine's)")
    parser.add_argument("--json", "--out", nargs="?", const="-", metavar="PATH",
                        help="write the full plan (plan.json's format, every job) to PATH, or to stdout without one")
    args = parser.parse_args(argv)
    inventory, dims = read_inventory(args)
    model = dims.get("model", "planned")
    speeds = {HERE: measured(args.backend)}
    if args.device != "none":
        if importlib.util.find_spec("torch") is None:  # a GPU job's start is measured with its torch import
            print(f"({args.device} left out: pricing a GPU job needs torch installed)", file=sys.stderr)
        else:
            speeds[args.device] = measured("cuda", args.device)
    precisions = args.precisions.split(",")
    plans = {label: plan_model(inventory, dims, t, args.method, args.compute_dtype, precisions,
                               deltas=args.deltas, adapter_only=args.adapter_only, diagnostics=args.diagnostics,
                               vectors=args.vectors) for label, t in speeds.items()}
    documents = {label: plan_document(model, plans[label], t, args.method, args.cores) for label, t in speeds.items()}
    document = {**documents[HERE], **({"gpu": documents[args.device]} if args.device in documents else {})}
    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout  # stdout holds the JSON alone then
    units = inventory["unit"].nunique()
    diagnosed = "no diagnostics" if not args.diagnostics else "diagnostics" + (" with vectors" if args.vectors else "")
    print(f"[{model}] {units} units, {len(plans[HERE])} per-unit jobs (svd_method {args.method}; precisions "
          f"{', '.join(precisions)}; compute dtype {args.compute_dtype}; {diagnosed})", file=out)
    print("\n".join(describe(label, doc) for label, doc in documents.items()) + "\n", file=out)
    print(plan_table(plans), file=out)
    print("(s: the predicted seconds of a rule's jobs, summed; peak MB: its largest job's host memory, "
          "what Snakemake's mem_mb requests)\n", file=out)
    print("\n".join(total_lines(label, plans[label], doc, args.cores) for label, doc in documents.items()), file=out)
    if to_stdout:
        sys.stdout.write(json.dumps(document, indent=1, default=str) + "\n")
    elif args.json:
        write_json(document, args.json)
        print(f"full plan: {args.json}", file=out)
    return 0  # the console script exits with it (a returned plan would be printed to stderr, exit status 1)


if __name__ == "__main__":
    main()
