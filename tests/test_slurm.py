"""The workflow through a real single-node SLURM (Debian's slurmctld/slurmd, fake GPUs).

Runs where the machine allows (root, and SLURM installed or apt reachable); skipped with the
reason otherwise. The daemons it starts are stopped by pid at the end. The SLURM executor
(requirements-slurm.txt, not in requirements.txt) is installed into the running environment
when missing, and uninstalled again afterwards, so that later snakemake calls do not pay its
controller probe.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, TINY_LLAMA, run_workflow

pytestmark = pytest.mark.slow
CONFIG = {"models": {"tiny": {"source": "synthetic", "config": TINY_LLAMA, "seed": 0}},
          "device": "cpu", "embedding": {"k_max": 4}, "headmerge": {"enabled": False}, "compress": {"enabled": False}}
DETERMINISTIC = ["matrix", "rows", "cols", "actual_rank", "effective_rank", "stable_rank", "alpha", "alpha_hill",
                 "xmin", "spectral_norm", "sparsity", "status"]


SLURM_REQUIREMENTS = ROOT / "requirements-slurm.txt"


def pip(*args):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def slurm_executor():
    """The SLURM executor plugin in this environment: installed from requirements-slurm.txt when
    missing (skip if pip cannot), uninstalled at the end when this fixture installed it."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm"):
        yield
        return
    installed = pip("install", "--quiet", "-r", str(SLURM_REQUIREMENTS))
    if installed.returncode != 0:
        pytest.skip(f"could not install {SLURM_REQUIREMENTS.name}: {installed.stderr.strip()[-300:]}")
    yield
    names = [line.split("==")[0] for line in SLURM_REQUIREMENTS.read_text().splitlines() if "==" in line]
    pip("uninstall", "--yes", *names)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a test SLURM needs root (daemons, /etc/slurm)")
    if not shutil.which("sinfo") and not shutil.which("apt-get"):
        pytest.skip("neither SLURM nor apt-get is available")
    state = tmp_path_factory.mktemp("slurm-state")
    started = subprocess.run(["bash", str(ROOT / "tests/slurm/start_slurm.sh"), str(state)],
                             capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"could not bring up a test SLURM: {started.stderr.strip()[-300:]}")
    yield state
    subprocess.run(["bash", str(ROOT / "tests/slurm/stop_slurm.sh"), str(state)], timeout=60)


def test_workflow_runs_through_sbatch_and_matches_a_local_run(slurm, slurm_executor, tmp_path):
    local = run_workflow(tmp_path / "local", CONFIG, "results/tiny/metrics.parquet")
    assert local.returncode == 0
    cluster = run_workflow(tmp_path / "cluster", CONFIG, "results/tiny/metrics.parquet", "--profile",
                           str(ROOT / "profiles/slurm-ci"), "--workflow-profile", "none")
    text = cluster.stdout + cluster.stderr
    job_ids = sorted(set(re.findall(r"SLURM jobid (\d+)", text)), key=int)
    assert job_ids, text[-3000:]
    # what SLURM recorded: the unit batches (with spectra) asked for a GPU
    records = [subprocess.run(["scontrol", "show", "job", "-o", i], capture_output=True, text=True).stdout
               for i in job_ids]
    gpu_jobs = [r for r in records if re.search(r"gres[/:]gpu[:=]1", r)]
    assert gpu_jobs, records
    assert all("JobState=COMPLETED" in r for r in records if r)
    assert len(job_ids) < 10  # 5 units batched into groups, not one sbatch per rule and unit
    a = pd.read_parquet(tmp_path / "local/results/tiny/metrics.parquet")[DETERMINISTIC]
    b = pd.read_parquet(tmp_path / "cluster/results/tiny/metrics.parquet")[DETERMINISTIC]
    pd.testing.assert_frame_equal(a.sort_values("matrix").reset_index(drop=True),
                                  b.sort_values("matrix").reset_index(drop=True), rtol=1e-5)
    assert "no GPU" in (tmp_path / "cluster/logs/tiny/anatomy/layer_000.log").read_text()  # fake GPUs: CPU inside


def test_a_rejected_job_is_reported_and_nothing_finished_is_lost(slurm, slurm_executor, tmp_path):
    work = tmp_path / "w"
    run_workflow(work, CONFIG, "results/tiny/model.json")  # finished locally
    before = (work / "results/tiny/inventory.parquet").stat().st_mtime_ns
    result = run_workflow(work, CONFIG, "results/tiny/tensors/layer_000.parquet", "--profile",
                          str(ROOT / "profiles/slurm-ci"), "--workflow-profile", "none",
                          "--default-resources", "slurm_partition=no-such-partition", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "no-such-partition" in text and "extract" in text  # which job, and why
    assert (work / "results/tiny/inventory.parquet").stat().st_mtime_ns == before
    assert not (work / "results/tiny/tensors/layer_000.parquet").exists()
