# Validation, the model table, input functions and manifest readers.
import functools
import json
import os
import sys

# The library lives beside this workflow; jobs (local or on a cluster) inherit the path.
sys.path.insert(0, workflow.basedir)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")]))

from blockscope.config import validate_config

validate_config(config)
MODELS = config["models"]


def gpu_present():
    """A GPU on this machine, without importing torch (the DAG must build fast)."""
    import shutil, subprocess

    if not shutil.which("nvidia-smi"):
        return False
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return probe.returncode == 0 and "GPU" in probe.stdout


# device: cpu never claims the gpu resource; auto claims it only where a GPU is visible
# (on a cluster, set device: cuda so that jobs ask SLURM for one).
BACKEND = {"auto": "cuda" if gpu_present() else "cpu"}.get(config["device"], config["device"])
GPU_CLAIM = 1 if BACKEND == "cuda" else 0


wildcard_constraints:
    model="[a-z0-9][a-z0-9._-]*",
    unit="embed|head|other|layer_[0-9]+",
    layer="[0-9]+",
    head="[0-9]+",


def model_spec(model):
    """A model's own config slice: the only config its rules see (keeps reruns per model)."""
    return MODELS[model]


def fetch_inputs(wildcards):
    like = model_spec(wildcards.model).get("like")
    return {"like": f"resources/models/{like}"} if like else {}


@functools.cache
def _unit_megabytes(model, stamp):
    import pyarrow.parquet as pq

    table = pq.read_table(f"results/{model}/inventory.parquet", columns=["unit", "nbytes"]).to_pandas()
    return (table.groupby("unit")["nbytes"].sum() / 2**20).to_dict()


def unit_megabytes(model, unit):
    """A unit's tensor bytes in MiB, from the inventory (re-read when it changes)."""
    stamp = os.path.getmtime(f"results/{model}/inventory.parquet")
    return _unit_megabytes(model, stamp).get(unit, 0.0)


def scaled(base, per_mb):
    """A resource that grows with the unit's size and with each retry (attempt 1, 2, ...)."""
    return lambda wildcards, attempt: int((base + per_mb * unit_megabytes(wildcards.model, wildcards.unit)) * attempt)


def model_dims(model):
    """model.json of a model (evaluates the inventory checkpoint)."""
    with open(checkpoints.inventory.get(model=model).output.dims) as fh:
        return json.load(fh)


def units(model):
    return model_dims(model)["units"]


def per_unit(pattern):
    """Input function: pattern expanded over every unit of the wildcard's model."""
    return lambda wildcards: expand(pattern, model=wildcards.model, unit=units(wildcards.model))


def deep_dive_heads(model):
    """[layer, head] pairs of the deep dive: the config's, else the middle layer's head 0."""
    return config["heads"]["deep_dive"] or [[model_dims(model)["layers"] // 2, 0]]


def deep_dive_files(model, ext):
    return [f"results/{model}/heads/deep_dive/layer_{layer}_head_{head}.{ext}" for layer, head in deep_dive_heads(model)]


# Random-init twins (synthetic with like:) are the controls their models are read against.
CONTROLS = {m: s["like"] for m, s in MODELS.items() if s["source"] == "synthetic" and s.get("like")}


def control_metrics(wildcards):
    return [f"results/{twin}/metrics.parquet" for twin, of in CONTROLS.items() if of == wildcards.model][:1]


def esd_layers(model):
    """Layers whose ESDs are plotted: the config's, else first, middle and last."""
    layers = model_dims(model)["layers"]
    chosen = config["report"]["esd_layers"] or [0, layers // 2, layers - 1]
    return sorted({layer for layer in chosen if 0 <= layer < layers})


def model_plot_files(model):
    return [
        *[f"results/{model}/plots/{metric}_by_layer.png" for metric in PLOT_METRICS],
        *[f"results/{model}/plots/esd_layer_{layer}.png" for layer in esd_layers(model)],
        f"results/{model}/plots/heads_heatmap.png",
        f"results/{model}/plots/precision_distributions.png",
        f"results/{model}/plots/precision",
        f"results/{model}/embedding/elbow.png",
        f"results/{model}/embedding/pca.png",
        *deep_dive_files(model, "png"),
    ]


HEADMERGE = config["headmerge"]


def headmerge_targets(model):
    if not HEADMERGE["enabled"]:
        return []
    return [
        *[f"results/{model}/headmerge/threshold_{t}.json" for t in HEADMERGE["thresholds"]],
        f"results/{model}/headmerge/summary.parquet",
    ]


def per_model_targets(model):
    return [
        *headmerge_targets(model),
        f"results/{model}/report.md",
        *deep_dive_files(model, "parquet"),
        *model_plot_files(model),
        *expand("results/{model}/embedding/{name}", model=model, name=["summary.json", "pca.png", "elbow.png"]),
        f"results/{model}/inventory.parquet",
        f"results/{model}/model.json",
        *expand(
            "results/{model}/{kind}/{unit}.parquet",
            model=model,
            kind=["tensors", "spectra", "metrics", "precision", "heads"],
            unit=units(model),
        ),
    ]


def all_targets(wildcards):
    return [target for model in MODELS for target in per_model_targets(model)] + [
        "results/summary/metrics.parquet",
        "results/summary/depth_comparison.csv",
        *[f"results/summary/plots/{metric}_by_depth.png" for metric in PLOT_METRICS],
    ]


# Downloads need the network (login nodes) and aggregation is light: keep them off the queue.
localrules:
    all,
    fetch,
    fetch_corpus,
    aggregate,
    summary,
    summary_plots,
    model_report,
