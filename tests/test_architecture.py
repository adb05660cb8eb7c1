"""The house rules of the library, checked on its own imports: subpackages in layers that follow
the data (a lower layer never imports a higher one), no two modules importing each other,
subpackage __init__ files without re-exports, modules of one job and modest size, a library that
never reads the workflow layer, and computing rules whose code hash holds no reporting or
config-validation module (a reworded report sentence reruns no experiment)."""

import ast
from pathlib import Path

import pytest

from blockscope.runtime.code_version import imported_modules, module_closure, module_file, own_name

from conftest import ROOT

PACKAGE = ROOT / "blockscope"
SCRIPTS = ROOT / "workflow_scripts"
# Lowest first: checkpoint -> tensors -> analysis -> tables -> evaluation/compression -> reporting.
LAYERS = [
    {"errors", "layout", "pair_layout", "diagnostic_layout"},   # the contracts every stage speaks
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
    inits = [init for init in PACKAGE.rglob("__init__.py")
             if init.parent != PACKAGE and "__pycache__" not in init.parts]
    assert len(inits) >= len(LAYERS) - 1
    for init in inits:
        body = ast.parse(init.read_text()).body
        docstring = len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str)
        assert docstring, f"{init.relative_to(ROOT)} holds more than a docstring"


def test_modules_stay_small():
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines, split along a seam: {long}"


WORKFLOW_LAYER = {"workflow_scripts", "rules", "schemas", "profiles", "envs", "report", "Snakefile"}


def test_the_library_never_reads_the_workflow_layer():
    """No path into the workflow's folders, no climb out of the package from __file__, no rule
    object read by attribute: callers pass paths and lists in."""
    found = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            for part in path_parts(node):
                if isinstance(part, ast.Constant) and isinstance(part.value, str) and \
                        part.value.strip("/").split("/")[0] in WORKFLOW_LAYER:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} builds a path to {part.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in ("input", "output", "params", "wildcards") and \
                    isinstance(node.value, ast.Name) and node.value.id == "snakemake":
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} reads snakemake.{node.attr}")
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "parents" and _from_file(node.value.value) and \
                    isinstance(node.slice, ast.Constant) and node.slice.value >= _depth(path):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} climbs out of the package")
    assert not found, found


def path_parts(node) -> list:
    """The operands that name a file: both sides of `/`, the arguments of Path(), open(), joinpath()."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return [node.left, node.right]
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name in ("Path", "open", "joinpath", "PurePath"):
            return list(node.args)
    return []


def _from_file(node) -> bool:
    """Whether an expression is built from __file__ (Path(__file__), Path(__file__).resolve())."""
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def _depth(path: Path) -> int:
    """parents[n] of a module's file that is the package's parent folder (the checkout)."""
    return len(path.relative_to(PACKAGE).parts)


def test_the_workflow_layer_check_sees_a_path_into_the_workflow():
    tree = ast.parse("SCHEMA = Path(__file__).resolve().parents[2] / 'schemas' / 'config.schema.yaml'\n"
                     "open('rules/common.smk')\n")
    named = [part.value for node in ast.walk(tree) for part in path_parts(node) if isinstance(part, ast.Constant)]
    assert {"schemas", "rules/common.smk"} <= set(named)


# Every rule script is one of two kinds; a new script must be placed (test below).
COMPUTING = ["aggregate", "anatomy", "compare_tables", "compress_lowrank", "compress_prune", "compress_quant",
             "compress_sensitivity", "delta_pairing", "delta_tables", "deltas", "detail_tables", "distances",
             "embedding", "evaluate_base", "extract", "fetch", "fetch_adapter", "fetch_corpus", "head_deep_dive",
             "headmerge", "inventory", "plan", "selection", "sensitivity_metrics", "series", "summary"]
REPORTING = ["adapter_report", "compare_plots", "compress_plots", "delta_plots", "down_proj_plot", "embedding_plots",
             "esd_plot", "head_deep_dive_plot", "head_precision_plots", "headmerge_plots", "metric_plots",
             "model_report", "precision_category_plots", "series_plots", "summary_plots", "summary_report"]


def test_every_script_is_either_computing_or_reporting():
    scripts = sorted(p.stem for p in SCRIPTS.glob("*.py"))
    assert sorted(COMPUTING + REPORTING) == scripts, set(scripts) ^ set(COMPUTING + REPORTING)


@pytest.mark.parametrize("script", COMPUTING)
def test_a_computing_rule_hashes_no_reporting_or_config_module(script):
    reached = {path.relative_to(PACKAGE).parts[0] for path in module_closure(SCRIPTS / f"{script}.py", PACKAGE)}
    assert not reached & {"reporting", "config"}, f"{script}: its code hash holds {reached & {'reporting', 'config'}}"
