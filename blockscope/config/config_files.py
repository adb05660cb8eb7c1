"""The config files as Snakemake reads them: UTF-8 text in which no key is given twice.

Snakemake parses the config files itself (JSON, else PyYAML) before blockscope sees the config.
A file that is not UTF-8 ends there in a traceback that names no file, and a key given twice in
one mapping silently keeps only its last value (a second `models:` block drops the first one's
models). So the raw files are read again here: `readable_config` just before Snakemake reads the
workflow's configfile, `check_config_files` at validation for every file the config came from.
Composing the YAML node tree with libyaml costs about a millisecond for a config of 100 lines.
"""

import os
from pathlib import Path

import yaml

from blockscope.config.origins import display_path, dotted
from blockscope.errors import BlockscopeError

# libyaml's parser where PyYAML has it; composing builds nodes only, no Python values
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE_TAG = "tag:yaml.org,2002:merge"


def config_text(path) -> str:
    """The file's text, decoded as Snakemake decodes it (UTF-8); else one line naming the first bad byte."""
    data, shown = Path(path).read_bytes(), display_path(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise BlockscopeError(
            f"line {line}, column {column} is not UTF-8 (byte 0x{data[exc.start]:02x}); Snakemake reads config "
            "files as UTF-8", path=shown,
            fix=f"save it as UTF-8 (from latin-1: iconv -f latin1 -t utf-8 {shown} > {shown}.utf8 && "
                f"mv {shown}.utf8 {shown})") from None


def readable_config(path):
    """path, once it reads as UTF-8 (for the Snakefile's `configfile:`, which reads it only when it exists)."""
    if os.path.exists(path):
        config_text(path)
    return path


def _first_duplicate(node, keys=(), seen=None):
    """(key path, first line, second line) of the first key given twice in one mapping, at any
    depth, each mapping's own keys before those of its values; None when there is none."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias repeats a node already walked
        return None
    seen.add(id(node))
    children = []
    if isinstance(node, yaml.MappingNode):
        lines = {}
        for key_node, value_node in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *defaults`: keys given next to it override, by design
                continue
            scalar = isinstance(key_node, yaml.ScalarNode)
            here = keys + (key_node.value if scalar else "?",)
            line = key_node.start_mark.line + 1
            if scalar and (key_node.tag, key_node.value) in lines:
                return here, lines[(key_node.tag, key_node.value)], line
            if scalar:
                lines[(key_node.tag, key_node.value)] = line
            children.append((value_node, here))
    elif isinstance(node, yaml.SequenceNode):
        children = [(item, keys + (index,)) for index, item in enumerate(node.value)]
    for child, here in children:
        found = _first_duplicate(child, here, seen)
        if found:
            return found
    return None


def check_no_duplicate_keys(path, text: str):
    """Refuse a key given twice in one mapping of the file at path (text: its content)."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        return  # Snakemake read it (as JSON, say); nothing to say about its keys here
    found = _first_duplicate(root) if root is not None else None
    if not found:
        return
    keys, first, second = found
    model = str(keys[1]) if len(keys) > 1 and keys[0] == "models" else None
    raise BlockscopeError(
        f"config key {dotted(keys)} is given twice (lines {first} and {second}); YAML keeps only the last, so what "
        f"line {first} set is silently dropped", model=model, path=display_path(path),
        fix=f"keep one {keys[-1]}: entry at that level (merge the two if both hold settings you want)")


def check_config_files(paths):
    """Each config file that exists reads as UTF-8 and gives no key twice."""
    for path in paths:
        if os.path.isfile(path):
            check_no_duplicate_keys(path, config_text(path))
