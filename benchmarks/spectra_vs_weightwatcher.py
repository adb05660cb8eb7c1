"""Our spectra stage against WeightWatcher 0.7.7 on the same model, in one run.

Peer: `WeightWatcher(model).analyze()` on the demo model loaded with transformers, timed as a
whole process (start to finish). Ours: the workflow from a finished extraction to every
metrics file (`snakemake --cores 2`, rule spectra; then rule precision as well). Prints the
wall-time ratios and the largest per-matrix alpha difference.

    make env && .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/snakemake --cores 2 results/smollm2-135m/model.json   # fetch + inventory once
    .venv/bin/python benchmarks/spectra_vs_weightwatcher.py [model]
"""

import glob
import json
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

WW_CHILD = """
import sys, json
import transformers, weightwatcher
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])
details = weightwatcher.WeightWatcher(model=model).analyze()
names = [name for name, _ in model.named_modules()]
rows = [{"module": names[int(r.layer_id)], "alpha": float(r.alpha)} for r in details.itertuples()]
json.dump(rows, open(sys.argv[2], "w"))
"""


def timed(command, **kwargs):
    started = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)
    return time.perf_counter() - started


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m"
    spec = yaml.safe_load((ROOT / "config.yaml").read_text())
    spec["models"] = {model: spec["models"][model]}
    spec["device"] = "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-spectra-"))
    (work / "config.yaml").write_text(yaml.safe_dump(spec))
    # a finished extraction, copied so the timing starts from there
    for part in ("resources/models", "results"):
        (work / part).mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "resources/models" / model, work / "resources/models" / model, symlinks=True)
    base = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(work), "--cores", "2", "--quiet", "all"]  # --quiet takes values: keep it last
    dims_target = f"results/{model}/model.json"
    subprocess.run([SNAKEMAKE, dims_target, *base], check=True, capture_output=True)
    units = json.loads((work / dims_target).read_text())["units"]
    tensors = [f"results/{model}/tensors/{u}.parquet" for u in units]
    subprocess.run([SNAKEMAKE, *tensors, *base], check=True, capture_output=True)

    metrics = [f"results/{model}/metrics/{u}.parquet" for u in units]
    precision = [f"results/{model}/precision/{u}.parquet" for u in units]
    ours_spectra = timed([SNAKEMAKE, *metrics, *base], capture_output=True)
    ours_precision = timed([SNAKEMAKE, *precision, *base], capture_output=True)
    ww_json = work / "ww.json"
    peer = timed([PYTHON, "-c", WW_CHILD, str(ROOT / "resources/models" / model), str(ww_json)],
                 capture_output=True)

    ours = pd.concat(pd.read_parquet(p) for p in glob.glob(str(work / f"results/{model}/metrics/*.parquet")))
    ours["module"] = ours["param_name"].str.removesuffix(".weight")
    theirs = pd.DataFrame(json.loads(ww_json.read_text()))
    joined = ours.merge(theirs, on="module", suffixes=("", "_ww"))
    diff = (joined["alpha"] - joined["alpha_ww"]).abs()
    worst = joined.loc[diff.idxmax()]
    seconds = ours["seconds"].sum()
    print(f"model {model}: {len(ours)} matrices ours, {len(theirs)} layers WeightWatcher, {len(joined)} matched")
    print(f"WeightWatcher 0.7.7 analyze(), whole process:        {peer:7.1f} s")
    print(f"blockscope spectra+metrics (snakemake --cores 2):    {ours_spectra:7.1f} s  ratio {ours_spectra / peer:.2f}x")
    print(f"  + precision sweep (fp32/fp16/bf16 alpha-Hill):      {ours_precision:7.1f} s  "
          f"ratio (both) {(ours_spectra + ours_precision) / peer:.2f}x")
    print(f"  time inside SVDs (sum of per-matrix seconds):        {seconds:7.1f} s")
    print(f"alpha, largest |ours - WeightWatcher| over matched matrices: {diff.max():.2e} ({worst['module']}); "
          f"median {diff.median():.2e}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
