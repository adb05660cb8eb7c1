"""transformers' model types, known without importing transformers where possible.

Validation runs on every snakemake invocation and the import costs seconds, so the names are
first read from transformers' auto-mapping source; only a name missing there pays for the import.
"""

import functools
import importlib.util
import re
from pathlib import Path


@functools.lru_cache(maxsize=1)
def model_types_from_source() -> frozenset:
    """transformers' model types read from its auto-mapping source files, without importing it
    (the import costs seconds). May miss a few; a miss is confirmed by the import."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    auto = Path(list(spec.submodule_search_locations)[0]) / "models" / "auto"
    names = set()
    for name in ("auto_mappings.py", "configuration_auto.py"):
        try:
            names.update(re.findall(r'"([\w.-]+)"\s*[,:]\s*"\w*Config"(?<!"AutoConfig")', (auto / name).read_text()))
        except OSError:
            pass
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def model_types_imported():
    """transformers' CONFIG_MAPPING_NAMES keys, or None without transformers (slow: imports it)."""
    try:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except Exception:
        return None
    return tuple(CONFIG_MAPPING_NAMES)


def known_model_type(model_type: str):
    """True / False, or None when transformers is not installed here (the fetch job will say)."""
    if model_type in model_types_from_source():
        return True
    exact = model_types_imported()
    return None if exact is None else model_type in exact
