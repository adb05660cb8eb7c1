"""Dry-run time of a fully finished workflow: 10 models x 32 layers, synthetic inventories.

No tensor is computed: every model gets a checkpoint folder, an inventory and model.json, then
every planned output is created empty and `snakemake --touch` marks it made, and the timed command is the no-op
`snakemake --dry-run` (DAG building, checkpoint evaluation, provenance checks). Peer, in the
same run: `snakemake --dry-run` of the same workflow with a single model, so the ratio says how
the DAG cost grows with ten times the jobs. Goal: under 5 s.

    .venv/bin/python benchmarks/dag_dry_run.py [models] [layers]
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from blockscope.layout import all_units

ROOT = Path(__file__).resolve().parent.parent
FIGURE_FOLDERS = ("precision", "precision_categories", "individual_layers")  # directory() outputs
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def prepare(work: Path, models: int, layers: int) -> dict:
    config = {"models": {}, "device": "cpu"}
    units = all_units(layers)
    for m in range(models):
        slug = f"model-{m:02d}"
        config["models"][slug] = {"source": "synthetic", "config": {"model_type": "llama", "num_hidden_layers": layers},
                                  "seed": m}
        checkpoint = work / "resources/models" / slug
        checkpoint.mkdir(parents=True)
        (checkpoint / "source.json").write_text(json.dumps({"source": "synthetic", "seed": m}))
        results = work / "results" / slug
        results.mkdir(parents=True)
        pd.DataFrame({"param_name": [f"{u}.weight" for u in units], "unit": units,
                      "layer_index": pd.array([int(u[6:]) if u.startswith("layer_") else None for u in units],
                                              dtype="Int64"),
                      "block_type": ["embedding" if u == "embed" else "other" for u in units],
                      "shape": [[16, 16]] * len(units), "dtype": "F32", "source_dtype": "F32", "nbytes": 1 << 20,
                      "file": "model.safetensors", "layout": "out_in"}).to_parquet(
            results / "inventory.parquet")
        (results / "model.json").write_text(json.dumps({"model": slug, "layers": layers, "units": units,
                                                        "architectures": ["LlamaForCausalLM"]}))
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def snakemake(work, *args):
    started = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, *args, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
                             "--cores", "2"], capture_output=True, text=True)
    return time.perf_counter() - started, result


def measure(models, layers):
    work = Path(tempfile.mkdtemp(prefix="bench-dag-"))
    prepare(work, models, layers)
    _, planned = snakemake(work, "--dry-run")
    for line in planned.stdout.splitlines():  # create every planned output, empty
        if line.strip().startswith(("output:", "benchmark:")):
            for name in line.split(":", 1)[1].split(","):
                path = work / name.strip().removesuffix(" (update)")
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.parent.name == "plots" and path.name in FIGURE_FOLDERS:
                    path.mkdir(exist_ok=True)
                else:
                    path.touch()
    _, touched = snakemake(work, "--touch")  # mark them made, in DAG order
    if touched.returncode != 0:
        raise SystemExit(touched.stderr[-2000:])
    seconds, result = snakemake(work, "--dry-run")
    done = "Nothing to be done" in result.stdout + result.stderr
    return seconds, done


def main():
    models = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    layers = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    ours, done = measure(models, layers)
    peer, _ = measure(1, layers)
    jobs = models * ((layers + 3) * 5 + 12)
    print(f"{models} models x {layers} layers (~{jobs} finished jobs): dry-run {ours:.2f} s, nothing to do: {done}")
    print(f"peer, 1 model x {layers} layers: dry-run {peer:.2f} s; ratio {ours / peer:.2f}x for {models}x the models")


if __name__ == "__main__":
    main()
