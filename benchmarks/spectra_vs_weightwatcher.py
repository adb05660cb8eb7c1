"""Our spectra stage against WeightWatcher 0.7.7 on the same models, in one run, per SVD method.

Models: the demo (SmolLM2-135M, GGUF) and a Qwen2.5-0.5B-shaped random checkpoint (synthetic:
24 layers, hidden 896, intermediate 4864, 14 heads, 2 kv heads, vocab 151936, tied embeddings).
Peer: `WeightWatcher(model).analyze()` on the same canonical checkpoint loaded with
transformers, timed as a whole process (start to finish). Ours: the workflow from a finished
extraction to every metrics file (`snakemake --cores 2`, rule spectra, from no metrics), once
per `svd_method` (gesdd, then auto); with --precision, rule precision after each as well.
Prints per model and method the DAG's wall and CPU seconds (the CPU seconds of the snakemake
process and every job it ran, from the children's rusage) and their ratios to WeightWatcher's
(measured alike), the seconds spent inside the SVDs in process (sum of the metrics' `seconds`),
and the largest per-matrix alpha difference from WeightWatcher's. On a machine shared with
other work, wall ratios are noise: read the CPU ratios, with OPENBLAS_NUM_THREADS=1 so that no
BLAS thread spins on a busy core.

    make env && .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/spectra_vs_weightwatcher.py [--models demo,qwen-0.5b] [--precision] [--workdir DIR]
"""

import argparse
import glob
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SNAKEMAKE = str(Path(PYTHON).parent / "snakemake")
METHODS = ("gesdd", "auto")

QWEN_05B_SHAPE = {"source": "synthetic", "seed": 0, "config": {
    "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
    "max_position_embeddings": 4096}}


def model_specs() -> dict:
    """Benchmark name -> (model slug, its config entry)."""
    demo = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["smollm2-135m"]
    return {"demo": ("smollm2-135m", demo), "qwen-0.5b": ("qwen2.5-0.5b-shape", QWEN_05B_SHAPE)}


WW_CHILD = """
import sys, json
import transformers, weightwatcher
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
details = weightwatcher.WeightWatcher(model=model).analyze()
names = [name for name, _ in model.named_modules()]
rows = [{"module": names[int(r.layer_id)], "alpha": float(r.alpha)} for r in details.itertuples()]
json.dump(rows, open(sys.argv[2], "w"))
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command, **kwargs):
    """(wall seconds, CPU seconds of the command and all it ran)."""
    started, cpu = time.perf_counter(), children_cpu()
    subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - started, children_cpu() - cpu


class Workdir:
    """A results folder for one model with a finished extraction; `snakemake` under a given svd_method."""

    def __init__(self, model, spec, parent=None):
        self.model, self.spec, self.kept = model, spec, parent is not None
        self.path = Path(parent) / model if parent else Path(tempfile.mkdtemp(prefix="bench-spectra-"))
        self.path.mkdir(parents=True, exist_ok=True)

    def clear(self, *kinds):
        for kind in kinds:
            shutil.rmtree(self.path / f"results/{self.model}/{kind}", ignore_errors=True)

    def snakemake(self, targets, svd_method="auto"):
        config = {"models": {self.model: self.spec}, "device": "cpu", "svd_method": svd_method}
        (self.path / "config.yaml").write_text(yaml.safe_dump(config))
        command = [SNAKEMAKE, *targets, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(self.path),
                   "--cores", "2", "--quiet", "all"]  # --quiet takes values: keep it last
        return timed(command, capture_output=True)

    def extract(self) -> list:
        """fetch, inventory and every unit's tensors (untimed); the units."""
        dims_target = f"results/{self.model}/model.json"
        self.snakemake([dims_target])
        units = json.loads((self.path / dims_target).read_text())["units"]
        self.snakemake([f"results/{self.model}/tensors/{u}.parquet" for u in units])
        return units

    def metrics(self) -> pd.DataFrame:
        return pd.concat(pd.read_parquet(p) for p in glob.glob(str(self.path / f"results/{self.model}/metrics/*.parquet")))


def weightwatcher_run(work: Workdir):
    ww_json = work.path / "ww.json"
    seconds = timed([PYTHON, "-c", WW_CHILD, str(work.path / "resources/models" / work.model), str(ww_json)],
                    capture_output=True)
    return seconds, pd.DataFrame(json.loads(ww_json.read_text()))


def ratios(ours, peer) -> str:
    return (f"wall {ours[0]:7.1f} s ({ours[0] / peer[0]:.2f}x WeightWatcher), "
            f"CPU {ours[1]:7.1f} s ({ours[1] / peer[1]:.2f}x)")


def alpha_gap(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    ours = ours.assign(module=ours["param_name"].str.removesuffix(".weight"))
    joined = ours.merge(theirs, on="module", suffixes=("", "_ww"))
    diff = (joined["alpha"] - joined["alpha_ww"]).abs()
    return (f"{len(joined)} matched, largest |alpha - WeightWatcher's| {diff.max():.2e} "
            f"({joined.loc[diff.idxmax(), 'module']}), median {diff.median():.2e}")


def bench_model(name, model, spec, with_precision, parent=None):
    work = Workdir(model, spec, parent)
    units = work.extract()
    metrics = [f"results/{model}/metrics/{u}.parquet" for u in units]
    precision = [f"results/{model}/precision/{u}.parquet" for u in units]
    runs = {}
    for method in METHODS:
        work.clear("metrics", "spectra", "precision")
        dag = work.snakemake(metrics, method)
        table = work.metrics()
        analysed = table[table["svd_method"].isin(["gesdd", "gram"])]
        runs[method] = {"dag": dag, "svd_seconds": analysed["seconds"].sum(), "table": analysed,
                        "methods": analysed["svd_method"].value_counts().to_dict(),
                        "precision": work.snakemake(precision, method) if with_precision else None}
    peer, theirs = weightwatcher_run(work)
    print(f"\n== {name} ({model}): {len(runs['gesdd']['table'])} matrices ours, {len(theirs)} layers WeightWatcher")
    print(f"WeightWatcher 0.7.7 analyze(), whole process: wall {peer[0]:7.1f} s, CPU {peer[1]:7.1f} s")
    for method, run in runs.items():
        print(f"svd_method {method:5s} spectra+metrics (snakemake --cores 2): {ratios(run['dag'], peer)}; "
              f"in-process SVD seconds {run['svd_seconds']:7.1f} ({run['methods']})")
        if run["precision"] is not None:
            both = tuple(a + b for a, b in zip(run["dag"], run["precision"]))
            print(f"    + precision sweep: {ratios(run['precision'], peer)}; both: {ratios(both, peer)}")
        print(f"    alpha vs WeightWatcher: {alpha_gap(run['table'], theirs)}")
    gesdd, auto = runs["gesdd"], runs["auto"]
    print(f"auto / gesdd: in-process SVD seconds {auto['svd_seconds'] / gesdd['svd_seconds']:.2f}, "
          f"DAG wall {auto['dag'][0] / gesdd['dag'][0]:.2f}, DAG CPU {auto['dag'][1] / gesdd['dag'][1]:.2f}",
          flush=True)
    if not work.kept:
        shutil.rmtree(work.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,qwen-0.5b")
    parser.add_argument("--precision", action="store_true", help="time rule precision after each method too")
    parser.add_argument("--workdir", help="keep each model's folder here (DIR/<model>) and reuse its extraction")
    args = parser.parse_args()
    specs = model_specs()
    for name in args.models.split(","):
        bench_model(name, *specs[name], args.precision, args.workdir)


if __name__ == "__main__":
    main()
