"""Which library modules a workflow script's results depend on, and a hash of their content.

A rule passes code_version(script) as a param, so that editing a module of blockscope reruns
exactly the jobs whose script reaches it through imports (analysis/heavytail.py: the anatomy and
what reads its outputs; a figure module: the rules that draw with it), and never the others. The
closure follows what a script calls: `from blockscope.analysis.heavytail import f` reaches that
module and what it imports, absolute or relative, at any level; `from blockscope.analysis import
heads` reaches the submodule. A package's `__init__.py` is reached only where a name it defines is
imported (the subpackages' are docstrings, so that no import pulls in a whole subpackage).

An import of blockscope that names no module, package or name of a package's `__init__.py` raises
UnresolvedImport: silently hashing something else would let an edit rerun nothing.
"""

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "blockscope"


class UnresolvedImport(ImportError):
    """An import of blockscope that names no file of the library."""


def imported_modules(source: str, module: str | None = None, is_package: bool = False) -> set:
    """What a piece of source imports from blockscope, as dotted names: modules, packages, or
    `package:name` for a name imported from a package that may be a submodule or an attribute
    of its `__init__.py` (module_file decides). module: the importing module's own dotted name,
    is_package: whether it is a package's `__init__.py` (relative imports resolve against it)."""
    found = set()
    for node in statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = relative_base(node, module, is_package) if node.level else node.module
            if base is None or base.split(".")[0] != PACKAGE:
                continue
            found |= {f"{base}:{alias.name}" for alias in node.names if alias.name != "*"}
            if any(alias.name == "*" for alias in node.names):
                found.add(base)
    return found


def relative_base(node: ast.ImportFrom, module: str | None, is_package: bool) -> str:
    """The absolute package a relative `from .x import y` (node.level dots) starts from."""
    if module is None:
        raise UnresolvedImport(f"a relative import (from {'.' * node.level}{node.module or ''}) outside the package")
    parts = module.split(".")
    package = parts if is_package else parts[:-1]
    if node.level - 1 >= len(package):
        raise UnresolvedImport(f"{'.' * node.level}{node.module or ''} in {module} goes above {PACKAGE}")
    anchor = package[:len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def statements(nodes):
    """Every statement, nested ones included (function and class bodies, if/try/with/match
    blocks): where an import can stand. Expressions are never entered, which makes this ~10x
    cheaper than ast.walk at every DAG build."""
    for node in nodes:
        yield node
        for block in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, block, None)
            if isinstance(children, list):
                yield from statements(children)


def _source_of(name: str, package_dir: Path) -> Path | None:
    """The file of a dotted module or package name, None when there is none."""
    path = package_dir.joinpath(*name.split(".")[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _defines(init: Path, name: str, stamp) -> bool:
    """Whether a package's __init__.py binds `name` at its top level (or serves it lazily)."""
    tree = ast.parse(init.read_text())
    for node in tree.body:
        targets = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            targets = [node.name]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            if "__all__" in targets and isinstance(node.value, (ast.List, ast.Tuple)):
                targets += [elt.value for elt in node.value.elts if isinstance(elt, ast.Constant)]
        elif isinstance(node, (ast.AnnAssign,)) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = [(alias.asname or alias.name).split(".")[0] for alias in node.names]
        if name in targets:
            return True
    return False


def module_file(name: str, package_dir: Path) -> Path:
    """The source file of what an import names: `a.b` a module or package; `a.b:c` the submodule
    a.b.c if there is one, else a.b's __init__.py, which must define c. Raises UnresolvedImport."""
    package_dir = Path(package_dir)
    base, _, attribute = name.partition(":")
    if attribute and (submodule := _source_of(f"{base}.{attribute}", package_dir)):
        return submodule
    path = _source_of(base, package_dir)
    if path is None:
        raise UnresolvedImport(f"{name.replace(':', ' import ')}: no such module in {package_dir}")
    if attribute:
        stat = path.stat()
        if path.name != "__init__.py" or not _defines(path, attribute, (stat.st_mtime_ns, stat.st_size)):
            if path.name != "__init__.py":
                return path  # `from module import name`: the module itself
            raise UnresolvedImport(f"from {base} import {attribute}: neither a submodule nor defined in {path}")
    return path


@functools.cache
def _imports_of(path: str, own_name: str | None, is_package: bool, stamp) -> frozenset:
    """imported_modules of a file, parsed once per content stamp (every rule asks at DAG build)."""
    return frozenset(imported_modules(Path(path).read_text(), own_name, is_package))


def _file_imports(path: Path, own_name: str | None = None) -> frozenset:
    stat = path.stat()
    return _imports_of(str(path), own_name, path.name == "__init__.py", (stat.st_mtime_ns, stat.st_size))


def own_name(path: Path, package_dir: Path) -> str:
    """The dotted name of a library file (a package's __init__.py: the package's name)."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    return ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def module_closure(script, package_dir, modules=()) -> list:
    """The library files a script reaches through imports (script None: the named modules
    themselves and what they reach), sorted."""
    package_dir = Path(package_dir)
    seen, pending = set(), [*(_file_imports(Path(script)) if script else ()), *modules]
    while pending:
        path = module_file(pending.pop(), package_dir)
        if path in seen:
            continue
        seen.add(path)
        pending += _file_imports(path, own_name(path, package_dir))
    return sorted(seen)


def code_version(script, package_dir, modules=()) -> str:
    """A short hash of the content of every library file the script (or, script None, the
    named modules, e.g. "blockscope.analysis.heads") reaches."""
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for path in module_closure(script, package_dir, modules):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
