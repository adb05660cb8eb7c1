"""Which library modules each rule's script reaches, and a hash that moves with exactly them."""

import shutil
import textwrap

import pytest

from blockscope.analysis.part_stamps import PART_MODULES
from blockscope.runtime.code_version import UnresolvedImport, code_version, imported_modules, module_closure

from conftest import ROOT

SCRIPTS = ROOT / "workflow_scripts"


def closure(script, package=ROOT / "blockscope"):
    return {path.relative_to(package).as_posix() for path in module_closure(SCRIPTS / f"{script}.py", package)}


def part_closure(part, package=ROOT / "blockscope"):
    return {path.relative_to(package).as_posix() for path in module_closure(None, package, PART_MODULES[part])}


def fake_package(tmp_path, files: dict):
    """A blockscope package of hand-written modules: path -> source."""
    package = tmp_path / "blockscope"
    for path, source in {"__init__.py": "", **files}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(textwrap.dedent(source))
    return package


def reached(package, modules):
    return {path.relative_to(package).as_posix() for path in module_closure(None, package, modules)}


def test_absolute_and_from_package_imports_are_named_with_what_they_import():
    source = ("import numpy\nfrom blockscope.reporting.plots import esd\nfrom blockscope import read_unit, layout\n"
              "def f():\n    from .heavytail import alpha_hill\n    from . import formulas as fx\n")
    assert imported_modules(source, "blockscope.analysis.spectra") == {
        "blockscope.reporting.plots:esd", "blockscope:read_unit", "blockscope:layout",
        "blockscope.analysis.heavytail:alpha_hill", "blockscope.analysis:formulas"}


@pytest.mark.parametrize("statement, expected", [
    ("from . import b", "blockscope.pkg.sub:b"),                 # a sibling submodule
    ("from .b import f", "blockscope.pkg.sub.b:f"),
    ("from .. import c", "blockscope.pkg:c"),                    # the parent package's submodule
    ("from ..c import f", "blockscope.pkg.c:f"),
    ("from ... import layout", "blockscope:layout"),             # three levels: the top package
    ("from ...io.tables import read_table", "blockscope.io.tables:read_table"),
])
def test_relative_imports_of_every_level_resolve_against_the_importing_module(statement, expected):
    assert imported_modules(statement, "blockscope.pkg.sub.a") == {expected}


def test_relative_imports_in_a_package_init_resolve_against_the_package_itself():
    assert imported_modules("from . import b\nfrom ..c import f", "blockscope.pkg.sub", is_package=True) == {
        "blockscope.pkg.sub:b", "blockscope.pkg.c:f"}


def test_a_relative_import_above_the_top_package_raises():
    with pytest.raises(UnresolvedImport):
        imported_modules("from .... import x", "blockscope.pkg.sub.a")


def test_the_closure_follows_relative_and_submodule_imports_to_the_right_files(tmp_path):
    package = fake_package(tmp_path, {
        "pkg/__init__.py": '"""a docstring only"""',
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": "from . import b\nfrom ..c import f\nfrom ... import layout\n",
        "pkg/sub/b.py": "from ...io import tables\n",
        "pkg/c.py": "def f(): pass\n",
        "layout.py": "",
        "io/__init__.py": "",
        "io/tables.py": "",
        "unrelated.py": "",
    })
    assert reached(package, ["blockscope.pkg.sub.a"]) == {
        "pkg/sub/a.py", "pkg/sub/b.py", "pkg/c.py", "layout.py", "io/tables.py"}


def test_a_name_defined_by_a_package_init_reaches_the_init(tmp_path):
    package = fake_package(tmp_path, {"__init__.py": "__all__ = ['read_unit']\n", "a.py": "from . import read_unit\n"})
    assert reached(package, ["blockscope.a"]) == {"a.py", "__init__.py"}


@pytest.mark.parametrize("source", [
    "from .missing import f",           # no such module
    "from . import missing",            # neither a submodule nor a name of __init__.py
    "from ..sub import gone",           # a package without that submodule
    "import blockscope.nowhere",
])
def test_an_import_that_names_no_library_file_raises(tmp_path, source):
    package = fake_package(tmp_path, {"pkg/__init__.py": "", "pkg/sub/__init__.py": "", "pkg/a.py": source})
    with pytest.raises(UnresolvedImport):
        module_closure(None, package, ["blockscope.pkg.a"])


def test_every_script_and_part_resolves():
    for script in SCRIPTS.glob("*.py"):
        assert closure(script.stem), script
    for part in PART_MODULES:
        assert part_closure(part)


def test_each_script_reaches_what_it_computes_with_and_no_more():
    computing = {"analysis/heavytail.py", "analysis/matrix_formulas.py", "analysis/metrics_row.py",
                 "analysis/spectra.py", "analysis/anatomy.py"}
    assert computing <= closure("anatomy") and computing <= part_closure("spectra") == part_closure("precision")
    assert {"analysis/heads.py", "analysis/factored.py", "checkpoint/attention_layout.py",
            "checkpoint/selection.py"} <= part_closure("heads")
    assert not {"analysis/heavytail.py", "analysis/spectra.py", "analysis/anatomy.py"} & part_closure("heads")
    for script in ("fetch", "inventory", "extract"):
        assert not {"analysis/heavytail.py", "analysis/metrics_row.py"} & closure(script), script
        assert not any(path.startswith("reporting/") for path in closure(script)), script
    plotting = {path.stem for path in SCRIPTS.glob("*.py")
                if any(p.startswith("reporting/figures/") for p in closure(path.stem))}
    assert plotting and all("plot" in name for name in plotting), plotting
    assert "__init__.py" in closure("embedding")  # `from blockscope import read_unit` runs the package's __init__
    assert "io/tensors.py" in closure("embedding")


def test_the_hash_moves_with_a_module_in_the_closure_only(tmp_path):
    package = tmp_path / "blockscope"
    shutil.copytree(ROOT / "blockscope", package, ignore=shutil.ignore_patterns("__pycache__"))

    def versions():
        scripts = {s: code_version(SCRIPTS / f"{s}.py", package) for s in ("anatomy", "extract", "metric_plots")}
        return {**scripts, **{part: code_version(None, package, PART_MODULES[part]) for part in PART_MODULES}}

    before = versions()
    heavytail = package / "analysis" / "heavytail.py"
    heavytail.write_text(heavytail.read_text() + "\n# an edit\n")
    after = versions()
    assert after["anatomy"] != before["anatomy"] and after["spectra"] != before["spectra"]
    assert after["precision"] != before["precision"]
    assert after["extract"] == before["extract"] and after["metric_plots"] == before["metric_plots"]
    assert after["heads"] == before["heads"]  # rule anatomy keeps the heads it has
