"""The docs against the code they describe.

docs/outputs.md names every declared column of blockscope.layout; docs/configuration.md's key
table is the one schemas/config.schema.yaml generates; README.md stays a short first page; the
files, rules and modules the docs name exist; docs/architecture.md names every library module;
nothing in the repository points outside it.

    python tests/test_docs.py --write   # regenerate the key table of docs/configuration.md
"""

import ast
import json
import re
import subprocess
import sys

import pytest
import yaml

from blockscope import diagnostic_layout, layout, pair_layout

from conftest import ROOT

OUTPUTS = (ROOT / "docs/outputs.md").read_text()
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs/configuration.md"
ARCHITECTURE = ROOT / "docs/architecture.md"
SCHEMA = ROOT / "schemas/config.schema.yaml"
TABLE_START, TABLE_END = "<!-- config-table:start -->", "<!-- config-table:end -->"
# Pages that describe the code as it is (CHANGELOG.md names old modules on purpose).
CURRENT_DOCS = [README, ROOT / "benchmarks/README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Spelled in two pieces so that this file does not name them itself.
OUTSIDE = ("/work/" + "shared", ".." + "/shared")
# Data, not documentation: the default run reads the WikiText-2 copy beside the checkout when it is
# there (offline machines) and downloads it otherwise. Nothing the repo explains lives outside it.
DATA_PATHS = {"config.yaml": "wikitext-2-raw/wiki.test.raw"}


def documented(column: str) -> bool:
    """`column`, or a family written once like `energy_rank_50/75/90/95/99`."""
    if f"`{column}`" in OUTPUTS:
        return True
    family = re.fullmatch(r"(.*_)(\d+)", column)
    pattern = rf"`{re.escape(family[1])}(?:[\d/]*/)?{family[2]}(?:/[\d/]*)?`" if family else None
    return bool(family) and re.search(pattern, OUTPUTS) is not None


TABLES = {**layout.TABLES, **pair_layout.TABLES, **diagnostic_layout.TABLES}


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_declared_column_is_documented(table):
    missing = [c for c in TABLES[table] if not documented(c)]
    assert not missing, f"{table}: {missing} not in docs/outputs.md"


def test_units_are_documented_by_their_contract_names():
    for unit in (layout.EMBED, layout.LM_HEAD, layout.OTHER, layout.layer_unit(0)):
        assert f"`{unit}`" in OUTPUTS


# --- README: a first page read in five minutes ---------------------------------------------------


def test_readme_is_at_most_150_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_first_screen_shows_the_commands_a_model_entry_and_the_report():
    first = "\n".join(README.read_text().splitlines()[:40])
    missing = [text for text in ("make run", "make test", "source:", "report.md") if text not in first]
    assert not missing, f"not in README.md's first 40 lines: {missing}"


def test_readme_carries_no_dated_measurements():
    """Measurements live in benchmarks/README.md and docs/, with their date and machine."""
    dated = re.findall(r"\b20\d\d-\d\d-\d\d\b|a week before|faster morning", README.read_text())
    assert not dated, dated


# --- nothing points outside the repository -------------------------------------------------------


def repository_files() -> list:
    """Tracked files and new ones git does not ignore (docs written but not yet committed)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_no_file_names_a_path_outside_the_repository():
    found = []
    for path in repository_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        for number, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            if any(outside in line for outside in OUTSIDE) and DATA_PATHS.get(path.name, "\0") not in line:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "paths outside the repository:\n" + "\n".join(found)


# --- what the docs name exists -------------------------------------------------------------------

FOLDERS = "rules|workflow_scripts|benchmarks|blockscope|schemas|profiles|envs|tests|docs|report"
PATH = re.compile(rf"`((?:{FOLDERS})/[\w./-]*)`")
DOTTED = re.compile(r"(?<![\w/.-])blockscope(?:\.\w+)+(?!\.?[\w/-])")
NOT_A_MODULE = {"blockscope.stamp"}  # a Parquet metadata key (docs/outputs.md)
SUBPACKAGES = "|".join(sorted(p.name for p in (ROOT / "blockscope").iterdir() if (p / "__init__.py").is_file()))
# `analysis.round_trip.RoundTrip`: a module (and name) of the library, written without `blockscope.`
SHORT = re.compile(rf"`((?:{SUBPACKAGES})\.\w+(?:\.\w+)?)`")
NOT_SHORT = {"config.json", "config.yaml", "config.model_type"}  # files and a config key


def module_defines(path, name: str) -> bool:
    """Whether a module's top level defines `name` (function, class, assignment or __all__)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = list(node.targets) if isinstance(node, ast.Assign) else []
        targets += [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            if any(isinstance(t, ast.Name) and t.id == name for t in names):
                return True
            if isinstance(target, ast.Name) and target.id == "__all__" and name in ast.literal_eval(node.value):
                return True
    return False


def resolves(dotted: str) -> bool:
    """blockscope.a.b is a module or package, or a name defined at the top of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[cut:]
            return not rest or (len(rest) == 1 and module_defines(module, rest[0]))
    return False


@pytest.mark.parametrize("page", CURRENT_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_and_modules_exist(page):
    if not page.exists():
        pytest.fail(f"{page.relative_to(ROOT)} is missing")
    text = page.read_text()
    missing = [p for p in PATH.findall(text) if not any(c in p for c in "{<*") and not (ROOT / p).exists()]
    missing += [f"rules/{name}" for name in re.findall(r"`(\w+\.smk)`", text) if not (ROOT / "rules" / name).exists()]
    missing += [d.rstrip(".") for d in DOTTED.findall(text)
                if d.rstrip(".") not in NOT_A_MODULE and not resolves(d.rstrip("."))]
    missing += [d for d in SHORT.findall(text) if d not in NOT_SHORT and not resolves(f"blockscope.{d}")]
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {missing}"


def test_metrics_headings_name_the_modules_that_hold_their_formulas():
    """docs/metrics.md: `## Heavy tails [analysis.heavytail]`, each bracketed module (or name) real."""
    headings = re.findall(r"^## .*\[([^\]]+)\]\s*$", (ROOT / "docs/metrics.md").read_text(), re.M)
    tags = [tag.strip() for heading in headings for tag in heading.split(",")]
    assert len(tags) >= 10
    wrong = [tag for tag in tags if not resolves(f"blockscope.{tag}")]
    assert not wrong, f"docs/metrics.md headings name what does not exist: {wrong}"


def rules_of(smk) -> set:
    return set(re.findall(r"^(?:rule|checkpoint) (\w+):", smk.read_text(), re.M))


def test_readme_stage_map_names_real_rules_scripts_and_modules():
    """Each row: rule files with their rules, the scripts, the library subpackages (modules);
    together the rows name every rule of every rule file they cite."""
    rows = [line.split("|")[1:-1] for line in README.read_text().splitlines()
            if line.startswith("| ") and ".smk" in line]
    assert len(rows) >= 10
    named, wrong = {}, []
    for stage, rule_files, scripts, library in rows:
        for smk, rules in re.findall(r"`(\w+\.smk)` \(([^)]*)\)", rule_files):
            named.setdefault(smk, set()).update(re.findall(r"`(\w+)`", rules))
        wrong += [f"workflow_scripts/{s}" for s in re.findall(r"`(\w+\.py)`", scripts)
                  if not (ROOT / "workflow_scripts" / s).exists()]
        for package, single, listed in re.findall(r"`([\w/]+?)/(\w*)`(?: \(([^)]*)\))?", library):
            folder = ROOT / "blockscope" / package
            modules = [single] if single else re.findall(r"\w+", listed)
            wrong += [f"blockscope/{package}/{m}.py" for m in modules if not (folder / f"{m}.py").exists()]
            wrong += [] if folder.is_dir() else [f"blockscope/{package}/"]
    for smk, rules in named.items():
        defined = rules_of(ROOT / "rules" / smk) if (ROOT / "rules" / smk).exists() else set()
        wrong += [f"{smk}: names rule {r}, which it does not define" for r in sorted(rules - defined)]
        wrong += [f"{smk}: rule {r} is not in the map" for r in sorted(defined - rules)]
    assert not wrong, f"README.md's stage map: {wrong}"


def test_every_rule_file_is_in_the_readme_stage_map():
    """Every .smk file that defines a rule (common.smk and its like hold helpers only)."""
    text = README.read_text()
    missing = [p.name for p in sorted((ROOT / "rules").glob("*.smk")) if rules_of(p) and f"`{p.name}`" not in text]
    assert not missing, missing


def test_architecture_places_every_library_module_in_its_layer():
    """docs/architecture.md's layer table: one row per subpackage, naming each of its modules."""
    rows = {}
    for line in ARCHITECTURE.read_text().splitlines():
        cells = line.split("|")[1:-1]
        if len(cells) == 4 and (folder := re.match(r"\s*`(\w+)/`", cells[1])):
            rows[folder[1]] = set(re.findall(r"`([\w/]+)`", cells[3]))  # figures/canvas: a nested package's
        elif len(cells) == 4 and "`layout.py`" in cells[1]:
            rows[""] = set(re.findall(r"`(\w+)`", cells[3]))
    missing = []
    for path in sorted((ROOT / "blockscope").rglob("*.py")):
        if path.name == "__init__.py" or "__pycache__" in path.parts:
            continue
        part = path.relative_to(ROOT / "blockscope")
        folder = part.parts[0] if len(part.parts) > 1 else ""
        if "/".join(part.with_suffix("").parts[1:] if folder else [path.stem]) not in rows.get(folder, ()):
            missing.append(str(part))
    named = {(folder, m) for folder, modules in rows.items() for m in modules}
    gone = [f"{folder}/{m}" for folder, m in sorted(named)
            if not (ROOT / "blockscope" / folder / f"{m}.py").exists()]
    assert not missing and not gone, f"docs/architecture.md: modules not in the layer table {missing}, " \
                                     f"named but not there {gone}"


# --- docs/configuration.md: every key of the schema ----------------------------------------------


def schema_table(schema: dict) -> str:
    """The Markdown table of every config key: its type or values, its default and meaning."""

    def resolve(node):
        while "$ref" in node:
            target = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def text(value):
        return re.sub(r"\s+", " ", str(value)).strip().replace("|", "\\|")

    def values(node):
        if "enum" in node:
            return " \\| ".join(f"`{v}`" for v in node["enum"])
        if "const" in node:
            return f"`{node['const']}`"
        kind = node.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        items = resolve(node.get("items", {}))
        if kind == "array" and "enum" in items:
            return "list of " + " \\| ".join(f"`{v}`" for v in items["enum"])
        return {"object": "mapping", "array": "list"}.get(kind, kind)

    def rows(properties, prefix, required=(), note=""):
        for key, raw in properties.items():
            node = resolve(raw)
            default = f"`{json.dumps(node['default'])}`" if "default" in node else (
                "required" if key in required else "")
            yield f"| `{prefix}{key}` | {values(node)} | {default} | {note}{text(node.get('description', ''))} |"
            if node.get("type") == "object" and node.get("properties"):
                yield from rows(node["properties"], f"{prefix}{key}.", node.get("required", ()))

    top = schema["properties"]
    lines = ["| key | type or values | default | meaning |", "|---|---|---|---|"]
    lines += rows({"models": top["models"]}, "", schema.get("required", ()))
    model = schema["$defs"]["model"]
    sources = {case["if"]["properties"]["source"]["const"]: resolve(case["then"]) for case in model["allOf"]}
    # keys every source takes alike (select) once; then each source's own keys
    shared = {key: node for key, node in next(iter(sources.values()))["properties"].items()
              if key != "source" and all(spec["properties"].get(key) == node for spec in sources.values())}
    lines += rows({**model["properties"], **shared}, "models.<slug>.", model.get("required", ()))
    for source, spec in sources.items():
        lines.append(f"| `source: {source}` | | | {text(spec.get('description', ''))} |")
        keys = {k: v for k, v in spec["properties"].items() if k != "source" and k not in shared}
        lines += rows(keys, "models.<slug>.", spec.get("required", ()), note=f"({source}) ")
    lines += rows({k: v for k, v in top.items() if k != "models"}, "", schema.get("required", ()))
    return "\n".join(lines)


def generated_table() -> str:
    return schema_table(yaml.safe_load(SCHEMA.read_text()))


def documented_table(page: str) -> str:
    return page.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()


def test_configuration_key_table_is_the_schema_s():
    page = CONFIGURATION.read_text()
    assert TABLE_START in page and TABLE_END in page
    assert documented_table(page) == generated_table(), \
        "docs/configuration.md's key table differs from the schema: run python tests/test_docs.py --write"


def test_the_key_table_has_every_schema_default():
    """Independent of schema_table: every default of the schema's top-level sections is shown."""
    schema = yaml.safe_load(SCHEMA.read_text())
    table = documented_table(CONFIGURATION.read_text())
    for key, node in schema["properties"].items():
        for name, leaf in node.get("properties", {}).items():
            assert f"| `{key}.{name}` |" in table
            if "default" in leaf:
                assert f"`{json.dumps(leaf['default'])}`" in table.split(f"| `{key}.{name}` |", 1)[1].split("\n", 1)[0]


def write_table():
    page = CONFIGURATION.read_text()
    head, rest = page.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    CONFIGURATION.write_text(f"{head}{TABLE_START}\n{generated_table()}\n{TABLE_END}{tail}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_table()
    else:
        print(generated_table())
