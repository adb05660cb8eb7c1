"""Damaged results and killed jobs: a damaged manifest (model.json, inventory.parquet) costs only its
model, a damaged per-unit table is named by the job that reads it, each with one line naming the
model, the file and the fix; the temporaries of a killed job go with the next run that writes its
outputs. Files are damaged for real and writers killed for real."""

import json
import re
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from blockscope import layout
from blockscope.errors import BlockscopeError
from blockscope.io.atomic import remove_stale_temporaries, stale_temporaries
from blockscope.io.manifests import read_inventory, read_model_json
from blockscope.io.tables import check_tables, parquet_damage, read_frame, read_table
from blockscope.io.tensors import read_unit

from conftest import WORKFLOW_BASE, copy_tree, run_workflow

FIX = "Fix: delete it; the next run rebuilds it."
GARBAGE = b"garbage, not what the job wrote\n"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def killed_writer(workdir, target):
    """Run a real process that dies by SIGKILL inside atomic_path, after writing half of `target`:
    what a job killed mid-write leaves. Returns its temporary."""
    code = ("import os, signal\nfrom blockscope.io.atomic import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    tmp.write_text('metric,half of a row')\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir)
    assert result.returncode == -signal.SIGKILL
    (temporary,) = stale_temporaries(workdir / target)
    return temporary


def one_line(text, line):
    """`line` is printed once as an ERROR line (the run's last lines may quote it again)."""
    assert text.count(f"ERROR {line}\n") == 1, text[-6000:]


# --- the readers, on files damaged for real ------------------------------------------------------


@pytest.fixture
def unit_file(tmp_path):
    """A real per-unit metrics table under results/{model}/ (the reader names the model from the path)."""
    from blockscope.io.tables import table_of, write_table

    path = tmp_path / "results/tiny/metrics/layer_002.parquet"
    path.parent.mkdir(parents=True)
    write_table(table_of(["matrix", "alpha"], {"matrix": ["a", "b"], "alpha": [2.5, 3.0]}), path)
    return path


def test_a_damaged_table_is_named_with_its_model_and_fix(unit_file):
    good = read_frame(unit_file)
    assert list(good["alpha"]) == [2.5, 3.0] and parquet_damage(unit_file) is None
    truncate(unit_file)
    assert parquet_damage(unit_file) == "no Parquet footer: truncated or overwritten"
    for read in (read_table, read_frame, read_unit):
        with pytest.raises(BlockscopeError) as info:
            read(unit_file)
        assert str(info.value) == (f"[tiny] {unit_file}: damaged (ArrowInvalid: Parquet magic bytes not found in "
                                   f"footer). {FIX}")


def test_damaged_data_pages_behind_a_whole_footer_are_named_too(unit_file):
    data = bytearray(unit_file.read_bytes())
    first_page = pq.ParquetFile(unit_file).metadata.row_group(0).column(1).data_page_offset
    data[first_page:first_page + 24] = b"\xff" * 24  # the alpha column's page header
    unit_file.write_bytes(bytes(data))
    assert parquet_damage(unit_file) is None  # the cheap check cannot see it; the read does
    with pytest.raises(BlockscopeError) as info:
        read_frame(unit_file, model="tiny")
    message = str(info.value)
    assert message.startswith(f"[tiny] {unit_file}: damaged (") and message.endswith(FIX) and "\n" not in message


def test_a_missing_table_is_not_called_damaged(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "results/tiny/metrics/layer_000.parquet")


def test_the_content_check_names_every_damaged_input_at_once(unit_file, tmp_path):
    short = unit_file.with_name("layer_003.parquet")
    short.write_bytes(GARBAGE)
    other = unit_file.with_name("layer_004.parquet")
    other.write_bytes(unit_file.read_bytes())
    truncate(other)
    check_tables([unit_file], "tiny")
    with pytest.raises(BlockscopeError) as info:
        check_tables([unit_file, short, other], "tiny")
    assert str(info.value) == (f"[tiny] {short}: damaged (ArrowInvalid: Parquet magic bytes not found in footer); "
                               f"1 more damaged: {other}. Fix: delete them; the next run rebuilds them.")


@pytest.mark.parametrize("text, why", [
    ("garbage{", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ('[{"layers": 2}]', "a JSON list, not the model's dimensions"),
    ('{"hidden": 64}', "'layers' is None, not a number of layers"),
    ('{"layers": "2"}', "'layers' is '2', not a number of layers"),
])
def test_a_damaged_model_json_is_named(tmp_path, text, why):
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(BlockscopeError) as info:
        read_model_json(path, "tiny")
    assert str(info.value) == f"[tiny] {path}: damaged ({why}). {FIX}"


def test_an_inventory_without_its_unit_columns_is_damaged(unit_file):
    with pytest.raises(BlockscopeError) as info:
        read_inventory(unit_file, "tiny")
    assert str(info.value) == f"[tiny] {unit_file}: damaged (no column param_name, unit, layer_index). {FIX}"


# --- the temporaries of killed writers -----------------------------------------------------------


def test_only_the_temporaries_of_the_given_outputs_are_stale(tmp_path):
    target = tmp_path / "results/tiny/phase_analysis.csv"
    target.parent.mkdir(parents=True)
    temporary = killed_writer(tmp_path, target.relative_to(tmp_path))
    assert temporary.name.startswith(".phase_analysis.csv.") and temporary.read_text() == "metric,half of a row"
    neighbours = [target.parent / ".phase_analysis.csv.x.k1ll3d00.tmp",  # the temporary of phase_analysis.csv.x
                  target.parent / ".metrics.csv.k1ll3d00.tmp"]  # another output's
    for path in neighbours:
        path.write_text("another output's")
    assert remove_stale_temporaries(target, tmp_path / "gone/folder.csv") == [temporary]
    assert not temporary.exists() and all(path.exists() for path in neighbours)


# --- the workflow ---------------------------------------------------------------------------------


@pytest.fixture
def work(finished_run, tmp_path):
    target = tmp_path / "work"
    copy_tree(finished_run, target)
    return target


@pytest.mark.slow
def test_a_damaged_model_json_costs_only_its_model(work):
    (work / layout.MODEL_JSON.format(model="tiny-llama")).write_bytes(GARBAGE)
    (work / layout.REPORT.format(model="tiny-gpt2")).unlink()  # the other model has work to do
    result = run_workflow(work, WORKFLOW_BASE, check=False)
    text = result.stdout + result.stderr
    line = (f"[tiny-llama] {layout.MODEL_JSON.format(model='tiny-llama')}: damaged (not valid JSON: Expecting value: "
            f"line 1 column 1 (char 0)). {FIX}")
    one_line(text, line)
    assert result.returncode == 1 and "Traceback" not in text
    assert (work / layout.REPORT.format(model="tiny-gpt2")).exists()
    assert "blockscope: 1 of 2 models finished (tiny-gpt2)" in text
    assert f"NOT FINISHED tiny-llama: manifest: {line}" in text


@pytest.mark.slow
def test_a_truncated_inventory_costs_only_its_model(work):
    truncate(work / layout.INVENTORY.format(model="tiny-gpt2"))
    (work / layout.REPORT.format(model="tiny-llama")).unlink()
    result = run_workflow(work, WORKFLOW_BASE, "--dry-run")
    text = result.stdout + result.stderr
    one_line(text, f"[tiny-gpt2] {layout.INVENTORY.format(model='tiny-gpt2')}: damaged (ArrowInvalid: Parquet magic "
                   f"bytes not found in footer). {FIX}")
    planned = set(re.findall(r"wildcards: model=([\w-]+)", text))
    assert planned == {"tiny-llama"} and "rule model_report:" in text


EMBED_RESOURCES = (r"rule extract:\n(?:.*\n)*?\s+wildcards: model=tiny-llama, unit=embed\n(?:\s+priority: .*\n)?"
                   r"\s+resources: .*")


@pytest.mark.slow
@pytest.mark.parametrize("manifest", [layout.MODEL_JSON, layout.INVENTORY])
def test_a_deleted_manifest_is_rebuilt(work, manifest):
    manifest = manifest.format(model="tiny-llama")
    embed = layout.TENSORS.format(model="tiny-llama", unit="embed")
    (work / manifest).unlink()
    (work / embed).unlink()  # an extract job, priced from the manifest
    plan = run_workflow(work, WORKFLOW_BASE, "--dry-run")
    text = plan.stdout + plan.stderr
    assert "ERROR" not in text and f"reason: Missing output files: {manifest}" in text
    plan = run_workflow(work, WORKFLOW_BASE, manifest, embed, "--dry-run")  # the extract job in the first DAG
    assert re.search(EMBED_RESOURCES + "mem_mb=<TBD>", plan.stdout + plan.stderr)  # priced once the manifest is back
    run = run_workflow(work, WORKFLOW_BASE, manifest, embed)
    text = run.stdout + run.stderr
    assert "checkpoint inventory:" in text and read_unit(work / embed)
    assert re.search(EMBED_RESOURCES + r"mem_mb=\d+", text)  # priced when it starts
    assert read_inventory(work / layout.INVENTORY.format(model="tiny-llama"))
    assert read_model_json(work / layout.MODEL_JSON.format(model="tiny-llama"))["layers"] == 2


@pytest.mark.slow
def test_a_damaged_per_unit_table_is_named_by_the_job_that_reads_it(work):
    metrics = layout.UNIT_METRICS.format(model="tiny-llama", unit="layer_001")
    spectra = layout.SPECTRA.format(model="tiny-llama", unit="layer_000")
    (work / metrics).write_bytes(GARBAGE)
    truncate(work / spectra)
    (work / layout.REPORT.format(model="tiny-gpt2")).unlink()
    result = run_workflow(work, WORKFLOW_BASE, check=False)
    text = result.stdout + result.stderr
    # named while the DAG is built, whether a job of this run reads it or not
    one_line(text, f"[tiny-llama] {metrics}: damaged (no Parquet header). {FIX}")
    one_line(text, f"[tiny-llama] {spectra}: damaged (no Parquet footer: truncated or overwritten). {FIX}")
    # and by the job that reads it, as its last line
    read = f"[tiny-llama] {metrics}: damaged (ArrowInvalid: Parquet magic bytes not found in footer). {FIX}"
    assert (work / "logs/tiny-llama/aggregate.log").read_text().splitlines()[-1] == f"ERROR {read}"
    assert result.returncode == 1  # the run's last lines give the first failing job's line (aggregate or esd_plot)
    assert re.search(r"NOT FINISHED tiny-llama: [\w/]+: \[tiny-llama\] results/tiny-llama/\w+/layer_00\d.parquet: "
                     + re.escape(f"damaged (ArrowInvalid: Parquet magic bytes not found in footer). {FIX}"), text)
    assert (work / layout.REPORT.format(model="tiny-gpt2")).exists()
    assert "blockscope: 1 of 2 models finished (tiny-gpt2)" in text


@pytest.mark.slow
def test_the_next_run_removes_the_temporaries_of_a_killed_job(work):
    phases = "results/tiny-llama/phase_analysis.csv"
    temporary = killed_writer(work, phases)
    unowned = work / "results/tiny-gpt2/.report.md.k1ll3d00.tmp"  # no job of the run below writes report.md
    unowned.write_text("half")
    result = run_workflow(work, WORKFLOW_BASE, phases, "--forcerun", "aggregate")
    text = result.stdout + result.stderr
    assert f"blockscope: removed {temporary.relative_to(work)}, the temporary of a job that was killed" in text
    assert not temporary.exists() and unowned.exists()
    assert stale_temporaries(*(work / "results/tiny-llama").iterdir()) == []
    assert (work / phases).read_text().startswith("block_type,metric,")  # written whole by the rerun


@pytest.mark.slow
def test_a_manifest_written_by_the_inventory_passes_its_check(finished_run):
    for model in WORKFLOW_BASE["models"]:
        dims = read_model_json(finished_run / layout.MODEL_JSON.format(model=model), model)
        assert dims == json.loads((finished_run / layout.MODEL_JSON.format(model=model)).read_text())
        assert read_inventory(finished_run / layout.INVENTORY.format(model=model), model).num_rows > 0


@pytest.mark.slow
def test_no_result_of_a_finished_run_is_called_damaged(finished_run):
    files = sorted((finished_run / "results").rglob("*.parquet"))
    assert files and [path for path in files if parquet_damage(path)] == []
    check_tables(files)
