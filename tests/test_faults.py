"""Faults met for real on a clone of the shared finished run: a figure job killed while it fills its
folder, a read-only results/, and a second run started in a folder another run is working in."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, SNAKEMAKE, WORKFLOW_BASE, copy_tree, run_workflow

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
# An outcome must be our one line: neither Snakemake's report of an exception nor a traceback.
NOT_ONE_LINE = ("Traceback", "Exception", "Error:", "Write-protected")


def snakemake(work, *args):
    """The command run_workflow runs, for a process the test starts, kills or runs under a mount."""
    return [str(SNAKEMAKE), *args, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--cores", "2", "--resources", "gpu=1"]


def wait_for(condition, process, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"snakemake ended before {what}"
        assert time.time() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.005)


def clone(finished_run, tmp_path, **changes):
    """A copy of the finished run, its config changed by `changes` (written as run_workflow writes it)."""
    work = tmp_path / "work"
    copy_tree(finished_run, work)
    (work / "config.yaml").write_text(yaml.safe_dump({**WORKFLOW_BASE, **changes}, sort_keys=False))
    return work


def figures(folder):
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith("."))


def test_a_figure_job_killed_while_it_fills_its_folder_leaves_no_half_folder_and_the_rerun_draws_it_whole(
        finished_run, tmp_path):
    # A changed precision threshold reruns aggregation and what follows, up to the report: the
    # run is killed while the chart folder is half drawn, as the run was.
    work = clone(finished_run, tmp_path, precision={"sensitivity_threshold": 0.06})
    folder = work / "results/tiny-llama/plots/precision_categories"
    drawn = figures(folder)
    assert len(drawn) >= 3  # one chart per block type: the kill can land between two of them
    temporaries = f".{folder.name}.*.tmp"  # atomic_dir's

    def new_charts():  # the charts the job has drawn so far, in the folder or in its temporary
        charts = []
        for place in [folder, *folder.parent.glob(temporaries)]:
            try:
                charts += [path for path in place.iterdir()
                           if not path.name.startswith(".") and path.stat().st_mtime >= started]
            except FileNotFoundError:  # not made yet, or removed or renamed meanwhile
                pass
        return charts

    target = "results/tiny-llama/report.md"
    started = time.time()
    process = subprocess.Popen(snakemake(work, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=ENV)
    wait_for(new_charts, process, "first chart of the killed job")
    os.killpg(process.pid, signal.SIGKILL)  # Snakemake and its jobs, as a cluster's kill does
    process.wait()
    # Killed between two charts (asserted, so that a kill that came too late cannot pass for a
    # good one), and no half folder under the final name.
    assert 0 < len(new_charts()) < len(drawn)
    assert not folder.exists(), f"a half folder was left: {figures(folder)}"
    run_workflow(work, WORKFLOW_BASE, "--unlock")
    # Snakemake's check for incomplete outputs misses this job (the report's inputs are known only
    # once the checkpoints are evaluated, after that check), so a half folder would be kept as
    # finished. Absent, the folder is drawn again, whole, and the temporary goes.
    run_workflow(work, {**WORKFLOW_BASE, "precision": {"sensitivity_threshold": 0.06}}, target)
    assert figures(folder) == drawn
    assert not list(folder.parent.glob(temporaries))


def read_only(folder, command):
    """Run `command` with `folder` mounted read-only over itself (a private mount namespace: root,
    which these tests run as, ignores permission bits but not a read-only mount)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"'
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, str(folder), *command], capture_output=True,
                          text=True, env=ENV)


@pytest.fixture
def can_mount(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    result = read_only(probe, ["sh", "-c", f"! touch {probe}/file 2>/dev/null"])
    if result.returncode != 0:
        pytest.skip(f"no read-only mount in a private mount namespace here: {result.stderr.strip()[:200]}")


def assert_one_line(result, line_start):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert lines[-1].startswith(line_start), result.stderr[-3000:]
    assert not any(word in result.stderr + result.stdout for word in NOT_ONE_LINE), result.stderr[-3000:]
    return lines[-1]


def test_a_read_only_results_folder_ends_in_one_line_naming_it(finished_run, tmp_path, can_mount):
    # Outputs there to be replaced (a changed precision threshold reruns aggregation and what
    # follows): Snakemake stops while building the DAG, on write-protected outputs.
    work = clone(finished_run, tmp_path, precision={"sensitivity_threshold": 0.06})
    line = assert_one_line(read_only(work / "results", snakemake(work)), "ERROR results: read-only")
    assert line.endswith("Fix: make it writable (chmod -R u+w results, or mount it read-write), or run in a "
                         "writable copy.")
    # Nothing there yet: the first job would fail creating its folder, in a traceback.
    fresh = tmp_path / "fresh"
    (fresh / "results").mkdir(parents=True)
    (fresh / "config.yaml").write_text(yaml.safe_dump(WORKFLOW_BASE, sort_keys=False))
    assert_one_line(read_only(fresh / "results", snakemake(fresh)), "ERROR results: read-only")
    assert not (fresh / "resources").exists() and not (fresh / "logs").exists()  # refused before any job


# Snakemake checks a run's lock only once its DAG is built, and the DAG check of the jobs to run
# reads as "write-protected" an output the other run has just removed to remake it. That window
# is short; this launcher makes it 5 s (the check waits, as on a busy file system) so that the
# second run meets the other run's removals as the run did, instead of its lock.
DELAYED_CHECK = """
import asyncio, sys
import snakemake.cli
from snakemake.dag import DAG

check_jobs = DAG.check_jobs

async def after_a_while(self):
    await asyncio.sleep(5)
    return await check_jobs(self)

DAG.check_jobs = after_a_while
sys.argv = ["snakemake", *sys.argv[1:]]
snakemake.cli.main()
"""


def test_a_second_run_in_a_folder_another_run_holds_ends_in_one_line(finished_run, tmp_path):
    work = clone(finished_run, tmp_path, precision={"sensitivity_threshold": 0.06})  # reruns aggregate
    report = work / "results/tiny-llama/report.md"
    before = report.stat().st_mtime_ns
    first = subprocess.Popen(snakemake(work), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    locks = work / ".snakemake/locks"
    wait_for(lambda: locks.is_dir() and any(locks.iterdir()), first, "lock of the first run")
    second = subprocess.run([sys.executable, "-c", DELAYED_CHECK, *snakemake(work)[1:]], capture_output=True,
                            text=True, env=ENV)
    still_running = first.poll() is None
    _, first_err = first.communicate(timeout=600)
    assert still_running, "the first run ended before the second one: nothing was tested"
    line = assert_one_line(second, f"ERROR {work}: another Snakemake run is working in this folder")
    assert line.endswith("Fix: wait for that run to end; if none is running (it was killed), run snakemake "
                         "--unlock, then start again.")
    assert first.returncode == 0, first_err[-3000:]  # the first run is not disturbed
    assert report.stat().st_mtime_ns > before
