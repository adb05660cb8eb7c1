"""Which library modules each rule's script reaches, and a hash that moves with exactly them."""

import shutil

from blockscope.anatomy import PART_MODULES
from blockscope.code_version import code_version, imported_modules, module_closure
from conftest import ROOT

SCRIPTS = ROOT / "workflow_scripts"


def closure(script, package=ROOT / "blockscope"):
    return {path.name for path in module_closure(SCRIPTS / f"{script}.py", package)}


def part_closure(part, package=ROOT / "blockscope"):
    return {path.name for path in module_closure(None, package, PART_MODULES[part])}


def test_imports_are_resolved_absolute_relative_and_from_the_package():
    source = ("import numpy\nfrom blockscope.plots import esd\nfrom blockscope import read_unit, layout\n"
              "def f():\n    from .heavytail import alpha_hill\n    from . import metrics as mx\n")
    assert imported_modules(source, "blockscope.spectra") == {
        "blockscope.plots", "blockscope.read_unit", "blockscope.layout", "blockscope.heavytail", "blockscope.metrics"}


def test_each_script_reaches_what_it_computes_with_and_no_more():
    computing = {"heavytail.py", "metrics.py", "matrix_metrics.py", "spectra.py", "unit_analysis.py"}
    assert computing <= closure("anatomy") and computing <= part_closure("spectra") == part_closure("precision")
    assert {"heads.py", "factored.py", "attention_layout.py", "selection.py"} <= part_closure("heads")
    assert not {"heavytail.py", "spectra.py", "unit_analysis.py"} & part_closure("heads")  # the heads are kept then
    for script in ("fetch", "inventory", "extract"):
        assert not {"heavytail.py", "plots.py", "matrix_metrics.py"} & closure(script), script
    plotting = {path.stem for path in SCRIPTS.glob("*.py") if "plots.py" in closure(path.stem)}
    assert plotting and all("plot" in name for name in plotting), plotting
    assert "__init__.py" in closure("embedding")  # `from blockscope import read_unit` runs the package's __init__
    assert "tensors.py" in closure("embedding")


def test_the_hash_moves_with_a_module_in_the_closure_only(tmp_path):
    package = tmp_path / "blockscope"
    shutil.copytree(ROOT / "blockscope", package, ignore=shutil.ignore_patterns("__pycache__"))
    def versions():
        scripts = {s: code_version(SCRIPTS / f"{s}.py", package) for s in ("anatomy", "extract", "metric_plots")}
        return {**scripts, **{part: code_version(None, package, PART_MODULES[part]) for part in PART_MODULES}}

    before = versions()
    (package / "heavytail.py").write_text((package / "heavytail.py").read_text() + "\n# an edit\n")
    after = versions()
    assert after["anatomy"] != before["anatomy"] and after["spectra"] != before["spectra"]
    assert after["precision"] != before["precision"]
    assert after["extract"] == before["extract"] and after["metric_plots"] == before["metric_plots"]
    assert after["heads"] == before["heads"]  # rule anatomy keeps the heads it has
