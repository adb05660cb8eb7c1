# Validation, the model table, input functions and manifest readers.
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


def per_model_targets(model):
    return [
        *[
            f"results/{model}/heads/deep_dive/layer_{layer}_head_{head}.{ext}"
            for layer, head in deep_dive_heads(model)
            for ext in ("parquet", "png")
        ],
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
    return [target for model in MODELS for target in per_model_targets(model)]
