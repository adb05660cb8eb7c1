"""The eval section (the evaluation's corpus and windows) and the place its keys had before 0.3.0.

The corpus and the window settings serve the base evaluation, head merging and the compression
experiments alike, so they moved from `headmerge` to `eval`. Until 0.5.0 the old keys are
read as the new ones, with one warning line per key naming both and the file; the rules across
the evaluation keys then name each key as the config spelled it.
"""

import sys
from pathlib import Path

from blockscope.config.origins import COMMAND_LINE, Origins, dotted, fail

OLD, NEW = "headmerge", "eval"
MOVED = ("corpus", "seq_len", "max_tokens", "gpu_seq_len", "gpu_max_tokens", "batch_size", "bootstrap", "dtype",
         "kl_top_k", "kl_tail_samples")
REFUSED_FROM = "0.5.0"


def given_keys(config: dict) -> set:
    """The eval keys the config sets itself: read before the schema fills in defaults."""
    section = config.get(NEW)
    return set(section) if isinstance(section, dict) else set()


def _rank(origins: Origins, label: str) -> int:
    """Precedence of a source label: 0 for --config, then the files from the one read last."""
    if label == COMMAND_LINE:
        return 0
    resolved = Path(label).resolve()
    files = [Path(f).resolve() for f in reversed(origins.files)]
    return 1 + files.index(resolved) if resolved in files else len(files) + 1


def _warn_stderr(line: str):
    print(line, file=sys.stderr)


def move_deprecated_keys(config: dict, given: set, origins: Origins, warn=_warn_stderr) -> dict:
    """Read each headmerge key of MOVED as its eval key, after the schema pass (which checked
    the old keys under their own names) and before the rules across keys. Where eval sets
    the key too, the source read last wins (--config over --configfile files over config.yaml);
    one source setting both to different values is refused. `given`: given_keys(config) before
    the schema pass. Returns {key: ("headmerge", key)} for the keys read from the old place."""
    old_section, new_section = config[OLD], config[NEW]
    read_from = {}
    for key in MOVED:
        if key not in old_section:
            continue
        old, new = (OLD, key), (NEW, key)
        value, source = old_section.pop(key), origins.of(old)
        if key in given and new_section[key] != value:
            new_source = origins.of(new)
            if new_source == source:
                fail(origins, old, f"config key {dotted(old)} (its name before 0.3.0) and {dotted(new)} are both "
                     "set, to different values", f"delete {dotted(old)} and keep {dotted(new)}", also=[new])
            if _rank(origins, new_source) < _rank(origins, source):
                warn(f"WARNING {source}: config key {dotted(old)} is deprecated and ignored: {dotted(new)} in "
                     f"{new_source} takes precedence. Fix: delete {dotted(old)}.")
                continue
        new_section[key] = value
        read_from[key] = old
        warn(f"WARNING {source}: config key {dotted(old)} is deprecated and read as {dotted(new)} until "
             f"{REFUSED_FROM}, which refuses it. Fix: rename it to {dotted(new)}.")
    return read_from


def check_evaluation(evaluation: dict, origins: Origins, read_from: dict):
    """Token budgets that hold at least one window; a file corpus names its file. Keys are named
    where the config set them (read_from: move_deprecated_keys' answer)."""
    def name(key, *sub):
        return read_from.get(key, (NEW, key)) + sub

    for length, budget in (("seq_len", "max_tokens"), ("gpu_seq_len", "gpu_max_tokens")):
        if evaluation[budget] is not None and evaluation[budget] < evaluation[length]:
            fail(origins, name(budget), f"config key {dotted(name(budget))} ({evaluation[budget]}) is below "
                 f"{dotted(name(length))} ({evaluation[length]}): not one window fits",
                 f"make {budget} at least {length}, or null for the whole split", also=[name(length)])
    corpus = evaluation["corpus"]
    if corpus["source"] == "file" and not corpus["path"]:
        path, source = dotted(name("corpus", "path")), dotted(name("corpus", "source"))
        fail(origins, name("corpus", "path"), f"config key {source} is file but {path} is not set",
             f"set {path} to a raw text file, or source: datasets", also=[name("corpus", "source")])
