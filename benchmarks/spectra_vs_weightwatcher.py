"""Our spectra stage against WeightWatcher 0.7.7 on the same models, in one run, per SVD method.

Models: the demo (SmolLM2-135M, GGUF) and a Qwen2.5-0.5B-shaped random checkpoint (synthetic:
24 layers, hidden 896, intermediate 4864, 14 heads, 2 kv heads, vocab 151936, tied embeddings).
Peer: `WeightWatcher(model).analyze()` on the same canonical checkpoint loaded with
transformers, timed as a whole process (start to finish). Ours: the workflow from a finished
extraction to every unit's metrics (`snakemake --cores 2`, rule anatomy from no results, with
the precision list [fp32], whose sweep reuses the spectra's singular values: spectra and metrics,
plus the heads tables and the fp32 alpha-Hill rows, which WeightWatcher does not compute), once
per `svd_method` (gesdd, then auto); with --anatomy, the full per-unit anatomy as well: every
unit's metrics, precision sweep (fp32, fp16, bf16) and heads in one snakemake call from no
results (what a user's run does), and, from the [fp32] run's results, the sweep alone (the
anatomy jobs rerun for the new precision list and keep their spectra and heads).
Each side runs --repeats times, interleaved, and the best (least) wall and CPU seconds count, as
timeit does: a busy moment on the machine only ever slows a run down.
Prints per model and method the DAG's wall and CPU seconds (the CPU seconds of the snakemake
process and every job it ran, from the children's rusage) and their ratios to WeightWatcher's
(measured alike), the seconds spent inside the SVDs in process (sum of the metrics' `seconds`),
and the largest per-matrix alpha difference from WeightWatcher's. On a machine shared with
other work, wall ratios are noise: read the CPU ratios, with OPENBLAS_NUM_THREADS=1 so that no
BLAS thread spins on a busy core.

    make env && .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/spectra_vs_weightwatcher.py [--models demo,qwen-0.5b] [--anatomy]
        [--repeats 3] [--workdir DIR]
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

    def snakemake(self, targets, svd_method="auto", precisions=None):
        config = {"models": {self.model: self.spec}, "device": "cpu", "svd_method": svd_method}
        if precisions:
            config["precision"] = {"precisions": precisions}
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
        pattern = str(self.path / f"results/{self.model}/metrics/*.parquet")
        return pd.concat(pd.read_parquet(p) for p in glob.glob(pattern))


def best(runs) -> tuple:
    """(least wall, least CPU) of several (wall, CPU) runs."""
    return min(wall for wall, _ in runs), min(cpu for _, cpu in runs)


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


def bench_model(name, model, spec, anatomy, repeats=1, parent=None):
    work = Workdir(model, spec, parent)
    units = work.extract()
    outputs = [f"results/{model}/{kind}/{u}.parquet" for kind in ("metrics", "precision", "heads") for u in units]
    runs = {method: {"dag": [], "rest": [], "full": [], "svd_seconds": []} for method in METHODS}
    peer_runs = []
    for _ in range(repeats):
        for method, run in runs.items():
            work.clear("metrics", "spectra", "precision", "heads")
            run["dag"].append(work.snakemake(outputs, method, precisions=["fp32"]))
            table = work.metrics()
            run["table"] = table[table["svd_method"].isin(["gesdd", "gram"])]
            run["svd_seconds"].append(run["table"]["seconds"].sum())
            if anatomy:
                run["rest"].append(work.snakemake(outputs, method))  # the default precisions: the sweep alone
                work.clear("metrics", "spectra", "precision", "heads")
                run["full"].append(work.snakemake(outputs, method))
        seconds, theirs = weightwatcher_run(work)
        peer_runs.append(seconds)
    peer = best(peer_runs)
    print(f"\n== {name} ({model}): {len(runs['gesdd']['table'])} matrices ours, {len(theirs)} layers WeightWatcher; "
          f"best of {repeats}")
    print(f"WeightWatcher 0.7.7 analyze(), whole process: wall {peer[0]:7.1f} s, CPU {peer[1]:7.1f} s "
          f"(each run's wall: {', '.join(f'{wall:.1f}' for wall, _ in peer_runs)} s)")
    for method, run in runs.items():
        methods = run["table"]["svd_method"].value_counts().to_dict()
        print(f"svd_method {method:5s} spectra+metrics (+ heads, precisions [fp32]; snakemake --cores 2): "
              f"{ratios(best(run['dag']), peer)}; "
              f"in-process SVD seconds {min(run['svd_seconds']):7.1f} ({methods})")
        if anatomy:
            print(f"    full anatomy (metrics, precision sweep fp32/fp16/bf16, heads; one call): "
                  f"{ratios(best(run['full']), peer)}; "
                  f"of which the sweep after the spectra: {ratios(best(run['rest']), peer)}")
        print(f"    alpha vs WeightWatcher: {alpha_gap(run['table'], theirs)}")
    gesdd, auto = runs["gesdd"], runs["auto"]
    print(f"auto / gesdd: in-process SVD seconds {min(auto['svd_seconds']) / min(gesdd['svd_seconds']):.2f}, "
          f"DAG wall {best(auto['dag'])[0] / best(gesdd['dag'])[0]:.2f}, "
          f"DAG CPU {best(auto['dag'])[1] / best(gesdd['dag'])[1]:.2f}", flush=True)
    if not work.kept:
        shutil.rmtree(work.path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,qwen-0.5b")
    parser.add_argument("--anatomy", action="store_true",
                        help="time the full per-unit anatomy (the precision sweep at fp32, fp16, bf16) "
                             "after each method too")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side; the best counts")
    parser.add_argument("--workdir", help="keep each model's folder here (DIR/<model>) and reuse its extraction")
    args = parser.parse_args()
    specs = model_specs()
    for name in args.models.split(","):
        bench_model(name, *specs[name], args.anatomy, args.repeats, args.workdir)


if __name__ == "__main__":
    main()
