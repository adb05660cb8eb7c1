"""The house rules of the library, checked on its own imports: subpackages in layers that follow
the data (a lower layer never imports a higher one), no two modules importing each other,
subpackage __init__ files without re-exports, modules of one job and modest size, a library that
never reads the workflow layer, and computing rules whose code hash holds no reporting or
config-validation module (a reworded report sentence reruns no experiment)."""

import ast
import re
from pathlib import Path

import pytest

from blockscope.runtime.code_version import imported_modules, module_closure, module_file, own_name

from conftest import ROOT

PACKAGE = ROOT / "blockscope"
SCRIPTS = ROOT / "workflow_scripts"
# Lowest first: checkpoint -> tensors -> analysis -> tables -> evaluation/compression -> reporting.
LAYERS = [
    {"errors", "layout"},   # the contracts every stage speaks
    {"runtime"},            # how a job runs: device, GPU slots, code hashes, the script step
    {"io"},                 # files: atomic writes, dtypes, safetensors, per-unit Parquet
    {"checkpoint"},         # sources, inventory, block types, attention layout, selection
    {"analysis"},           # one unit's matrices measured
    {"aggregation"},        # per-unit tables stacked into a model's tables
    {"evaluation"},         # a model on a corpus: base evaluation, head merging
    {"compression"},        # plans from the spectra, applied and scored
    {"reporting"},          # findings, reports, figures
    {"planning"},           # the cost model (calibrates by running the analysis)
    {"config"},             # config validation: reads every stage's settings
]
MAX_LINES = 500


def modules():
    return sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)


def layer_of(path: Path) -> int:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if top == "__init__":  # the public reading API, a facade over io: nothing in the library imports it
        return len(LAYERS)
    return next(index for index, names in enumerate(LAYERS) if top in names)


def imports_of(path: Path) -> set:
    names = imported_modules(path.read_text(), own_name(path, PACKAGE), path.name == "__init__.py")
    return {module_file(name, PACKAGE) for name in names} - {path}


def test_every_module_belongs_to_a_layer():
    unplaced = [str(p.relative_to(PACKAGE)) for p in modules() if p.parent == PACKAGE and p.stem != "__init__"
                and not any(p.stem in names for names in LAYERS)]
    folders = {p.relative_to(PACKAGE).parts[0] for p in modules() if p.parent != PACKAGE}
    assert not unplaced and folders <= set().union(*LAYERS), (unplaced, folders)


def test_a_lower_layer_never_imports_a_higher_one():
    wrong = [f"{path.relative_to(PACKAGE)} -> {target.relative_to(PACKAGE)}"
             for path in modules() for target in imports_of(path) if layer_of(target) > layer_of(path)]
    assert not wrong, wrong


def test_no_two_modules_import_each_other_even_through_others():
    graph = {path: imports_of(path) for path in modules()}
    cycles = []
    for start in graph:
        seen, pending = set(), list(graph[start])
        while pending:
            node = pending.pop()
            if node == start:
                cycles.append(str(start.relative_to(PACKAGE)))
                break
            if node not in seen:
                seen.add(node)
                pending += graph.get(node, ())
    assert not cycles, cycles


def test_subpackage_inits_hold_a_docstring_only():
    """A re-export would pull its whole subpackage into the code hash of every rule that imports one module."""
    for init in PACKAGE.glob("*/__init__.py"):
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{init.relative_to(ROOT)} holds more than a docstring"


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines, split along a seam: {long}"


def test_the_library_never_reads_the_workflow_layer():
    pattern = re.compile(r"workflow_scripts|rules/|\.smk\b|Snakefile|snakemake\.(input|output|params)")
    readers = [str(p.relative_to(PACKAGE)) for p in modules()
               if any(pattern.search(line) and not line.lstrip().startswith("#") for line in code_lines(p))]
    assert not readers, readers


def code_lines(path: Path) -> list:
    """The source lines outside docstrings and comments."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings |= set(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    return [line for number, line in enumerate(path.read_text().splitlines(), 1) if number not in docstrings]


def reporting_script(name: str) -> bool:
    """A rule that only reads finished tables to draw or write a report."""
    return "plot" in name or "report" in name


COMPUTING = sorted(p.stem for p in SCRIPTS.glob("*.py") if not reporting_script(p.stem))


def test_both_kinds_of_rule_exist():
    assert {"anatomy", "compress_quant", "compress_prune", "evaluate_base", "headmerge"} <= set(COMPUTING)
    assert {"model_report", "summary_report", "metric_plots"} <= {p.stem for p in SCRIPTS.glob("*.py")} - set(COMPUTING)


@pytest.mark.parametrize("script", COMPUTING)
def test_a_computing_rule_hashes_no_reporting_or_config_module(script):
    reached = {path.relative_to(PACKAGE).parts[0] for path in module_closure(SCRIPTS / f"{script}.py", PACKAGE)}
    assert not reached & {"reporting", "config"}, f"{script}: its code hash holds {reached & {'reporting', 'config'}}"
