"""Where a config key came from, and the one-line error that names it.

Every refusal of the config is one short BlockscopeError: what is wrong with which key, the file
(or --config) that set it and the fix. The files are read only when an error has to name one.
"""

import difflib
import reprlib
from collections.abc import Mapping
from pathlib import Path

import yaml

from blockscope.errors import BlockscopeError

COMMAND_LINE = "--config on the command line"
DESCRIBED = "every key is described in schemas/config.schema.yaml"
MAX_WHAT, MAX_FIX = 300, 200  # characters: a message stays one readable line

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 3, 2


# --- where a key came from ----------------------------------------------------------------------

def display_path(path) -> str:
    """A config file as an error names it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def _holds(data, keys) -> bool:
    for key in keys:
        if isinstance(data, Mapping) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return False
    return True


class Origins:
    """The config's sources, lowest precedence first: files, then --config values. Files are
    read only when an error has to name one."""

    def __init__(self, configfiles=("config.yaml",), cli_configfiles=(), command_line=None):
        cli = [Path(f) for f in cli_configfiles or ()]
        cli_resolved = {f.resolve() for f in cli}
        first = [Path(f) for f in configfiles or () if Path(f).resolve() not in cli_resolved]
        self.files = list(dict.fromkeys(first + cli)) or [Path("config.yaml")]
        self.command_line = dict(command_line or {})

    def _load(self, path):
        try:
            return yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            return {}

    def of(self, *key_paths) -> str:
        """The label of the source that set the first of key_paths that any source sets (the one
        read last wins, as in Snakemake): the file's path, or COMMAND_LINE."""
        if not self.command_line and len(self.files) == 1:
            return display_path(self.files[0])
        sources = [(COMMAND_LINE, self.command_line)] + [(display_path(f), f) for f in reversed(self.files)]
        loaded = {}
        for keys in key_paths:
            for label, data in sources:
                if isinstance(data, Path):
                    data = loaded[label] = loaded[label] if label in loaded else self._load(data)
                if _holds(data, keys):
                    return label
        return display_path(self.files[-1])


# --- the one-line error -------------------------------------------------------------------------

def dotted(keys) -> str:
    """A key path as the user writes it: models.tiny.select.layers."""
    return ".".join(str(k) for k in keys) or "(top level)"


def _cap(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def fail(origins: Origins, keys, what: str, fix: str | None = None, also=()):
    """Raise the one-line error for key path `keys` (and `also`, key paths that share the blame)."""
    keys = tuple(keys)
    source = origins.of(keys, *also)
    model = _cap(keys[1], 60) if len(keys) > 1 and keys[0] == "models" else None
    if fix is None:
        where = "the --config value" if source == COMMAND_LINE else source
        fix = f"edit {where} ({DESCRIBED})"
    raise BlockscopeError(_cap(what, MAX_WHAT), model=model, path=source, fix=_cap(fix, MAX_FIX))


def nearest(word, choices, n=3) -> list:
    """Up to n of `choices` close to `word`: a hint, never the whole list."""
    return difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)


def short_repr(value) -> str:
    """repr(value) cut short, so that a huge bad value cannot flood the message."""
    return _short.repr(value)
