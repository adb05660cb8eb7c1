"""Which library modules a workflow script's results depend on, and a hash of their content.

A rule passes code_version(script) as a param, so that editing a module of blockscope reruns
exactly the jobs whose script reaches it through imports (heavytail.py: spectra and what reads
its outputs; plots.py: the plot rules), and never the others. The closure follows what a script
calls: `from blockscope.x import f` reaches x and what x imports; only a script that imports
names from the package itself (`from blockscope import read_unit`) reaches __init__.py.
"""

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "blockscope"


def imported_modules(source: str, module: str | None = None) -> set:
    """Dotted names of the blockscope modules a piece of source imports (module: its own name)."""
    found = set()
    package = module.rsplit(".", 1)[0] if module and "." in module else PACKAGE
    for node in statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = (f"{package}.{node.module}" if node.module else package) if node.level else node.module
            if base is None or base.split(".")[0] != PACKAGE:
                continue
            if base == PACKAGE:  # `from blockscope import x`: x is a module, or a name __init__ exports
                found |= {f"{PACKAGE}.{alias.name}" for alias in node.names}
            else:
                found.add(base)
    return found


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


def module_file(name: str, package_dir: Path) -> Path:
    """The source file of a dotted blockscope name; a name that is no module is an attribute of
    the package, defined by its __init__.py."""
    path = package_dir.joinpath(*name.split(".")[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return package_dir / "__init__.py"


@functools.cache
def _imports_of(path: str, own_name: str | None, stamp) -> frozenset:
    """imported_modules of a file, parsed once per content stamp (every rule asks at DAG build)."""
    return frozenset(imported_modules(Path(path).read_text(), own_name))


def _file_imports(path: Path, own_name: str | None = None) -> frozenset:
    stat = path.stat()
    return _imports_of(str(path), own_name, (stat.st_mtime_ns, stat.st_size))


def module_closure(script, package_dir, modules=()) -> list:
    """The library files a script reaches through imports (script None: the named modules
    themselves and what they reach), sorted."""
    package_dir = Path(package_dir)
    seen, pending = {}, [*(_file_imports(Path(script)) if script else ()), *modules]
    while pending:
        name = pending.pop()
        path = module_file(name, package_dir)
        if path in seen.values():
            continue
        seen[name] = path
        own_name = ".".join((PACKAGE, *path.relative_to(package_dir).with_suffix("").parts))
        pending += _file_imports(path, own_name)
    return sorted(seen.values())


def code_version(script, package_dir, modules=()) -> str:
    """A short hash of the content of every library file the script (or, script None, the
    named modules, e.g. "blockscope.heads") reaches."""
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for path in module_closure(script, package_dir, modules):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
