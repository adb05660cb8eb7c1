"""Every third-party package the library and the rule scripts import is pinned, at one version,
in requirements.txt (make env) and in envs/blockscope.yaml (--software-deployment-method conda).
The SLURM executor is pinned apart, in requirements-slurm.txt (the cluster path only)."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "blockscope").rglob("*.py"), *(ROOT / "workflow_scripts").glob("*.py")])
ENV = ROOT / "envs" / "blockscope.yaml"
REQUIREMENTS = ROOT / "requirements.txt"
SLURM_REQUIREMENTS = ROOT / "requirements-slurm.txt"
SLURM_PLUGINS = {"snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep"}
# Provided by the workflow itself, not by the env: the package under test and Snakemake.
PROVIDED = {"blockscope", "snakemake"}
# Optional dependencies a library imports on first use of a method: method -> distribution.
OPTIONAL = {"to_markdown": "tabulate"}  # pandas.DataFrame.to_markdown
# The env installs blockscope from its source tree (see the comment in envs/blockscope.yaml).
EDITABLE_SELF = "-e ${BLOCKSCOPE_SOURCE}"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(path: Path) -> set:
    """Top-level names of absolute imports anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in PROVIDED}


def optional_distributions(path: Path) -> set:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {OPTIONAL[n.attr] for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in OPTIONAL}


def parse_pin(line: str):
    """name==version (pip) or name=version (conda) -> (normalised name, version); None if unpinned."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==?\s*([^\s;#]+)\s*(?:#.*)?", line)
    return (normalise(match.group(1)), match.group(2)) if match else None


def requirement_pins(path: Path = REQUIREMENTS) -> dict:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pin = parse_pin(line)
            assert pin, f"{path.name}: not pinned with ==: {line!r}"
            pins[pin[0]] = pin[1]
    return pins


def env_pip_entries() -> list:
    env = yaml.safe_load(ENV.read_text())
    sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "envs/blockscope.yaml: expected one pip: section"
    return [str(entry) for entry in sections[0]]


def env_pins() -> dict:
    pins = {}
    for entry in env_pip_entries():
        if entry.startswith("-"):          # pip options (-e ..., --index-url ...)
            continue
        pin = parse_pin(entry)
        assert pin, f"envs/blockscope.yaml: pip entry not pinned with ==: {entry!r}"
        pins[pin[0]] = pin[1]
    return pins


def imported_distributions() -> dict:
    """distribution (normalised) -> the source files that need it."""
    providers = importlib.metadata.packages_distributions()
    needed, unknown = {}, {}
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        for name in third_party_imports(path):
            if name not in providers:
                unknown.setdefault(name, []).append(rel)
            for dist in providers.get(name, []):
                needed.setdefault(normalise(dist), []).append(rel)
        for dist in optional_distributions(path):
            needed.setdefault(normalise(dist), []).append(rel)
    assert not unknown, f"imported but installed by no distribution in this environment: {unknown}"
    return needed


def test_sources_are_found():
    assert any(p.parent.name == "blockscope" for p in SOURCES)
    assert any(p.parent.name == "workflow_scripts" for p in SOURCES)


def test_import_collection_sees_nested_and_from_imports(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text("import os, numpy as np\nfrom scipy.linalg import svd\nfrom . import sibling\n"
                      "from .x import y\nimport blockscope.layout\nimport snakemake\n"
                      "def f():\n    import sklearn.cluster\n    class A:\n        from yaml import safe_load\n"
                      "    return frame.to_markdown()\n")
    assert third_party_imports(source) == {"numpy", "scipy", "sklearn", "yaml"}
    assert optional_distributions(source) == {"tabulate"}


def test_pin_parsing():
    assert parse_pin("PyYAML==6.0.3") == ("pyyaml", "6.0.3")
    assert parse_pin("huggingface_hub==2.4.0") == ("huggingface-hub", "2.4.0")
    assert parse_pin("python=3.11") == ("python", "3.11")
    assert parse_pin("kneed") is None and parse_pin("numpy>=2") is None


@pytest.mark.parametrize("pins, where", [(requirement_pins, "requirements.txt"), (env_pins, "envs/blockscope.yaml")])
def test_every_imported_distribution_is_pinned(pins, where):
    pinned = pins()
    missing = {dist: files for dist, files in imported_distributions().items() if dist not in pinned}
    assert not missing, f"{where} does not pin (distribution: files that import it): {missing}"


def test_import_names_map_to_distributions():
    """The import-name -> distribution step is what catches sklearn and yaml."""
    needed = imported_distributions()
    assert "scikit-learn" in needed and "pyyaml" in needed
    assert "sklearn" not in needed and "yaml" not in needed


def test_env_and_requirements_pin_the_same_versions():
    requirements, env = requirement_pins(), env_pins()
    assert set(env) <= set(requirements), \
        f"pinned in envs/blockscope.yaml only: {sorted(set(env) - set(requirements))}"
    differ = {name: (requirements[name], env[name]) for name in env if env[name] != requirements[name]}
    assert not differ, f"versions differ (requirements.txt, envs/blockscope.yaml): {differ}"


def test_the_slurm_executor_is_pinned_for_the_cluster_path_only():
    """Snakemake loads every installed executor plugin at start and the SLURM one probes the
    controller (`scontrol show config`, ~9 s where none answers): a laptop install leaves it out."""
    assert set(requirement_pins(SLURM_REQUIREMENTS)) == SLURM_PLUGINS
    assert not SLURM_PLUGINS & set(requirement_pins()), "requirements.txt installs the SLURM executor"
    assert not SLURM_PLUGINS & set(env_pins()), "envs/blockscope.yaml installs the SLURM executor"


def test_env_installs_blockscope_from_its_source_last():
    """Rules import blockscope; the env installs it from BLOCKSCOPE_SOURCE (the workflow's base
    dir), which pip expands, since Snakemake copies env files away and relative paths break."""
    entries = env_pip_entries()
    assert entries[-1] == EDITABLE_SELF
    assert entries.count(EDITABLE_SELF) == 1


def test_a_non_editable_install_ships_every_module(tmp_path):
    """`pip install .` (not -e) installs what the wheel holds: every module of every subpackage."""
    import shutil
    import subprocess
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "blockscope", source / "blockscope", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("blockscope-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "blockscope").rglob("*.py")
               if "__pycache__" not in path.parts}
    assert len(modules) > 60 and modules == shipped, sorted(modules ^ shipped)
