"""A model and its base hold the same tensors: the same names with the same shapes, checked on the
two whole-model inventories before any delta job runs."""

from blockscope.errors import BlockscopeError


def _shapes(rows) -> dict:
    """param name -> shape (a tuple of ints) of inventory rows (dicts, or a DataFrame's records),
    in the inventory's order."""
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    return {row["param_name"]: tuple(int(d) for d in row["shape"]) for row in rows}


def _dims(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def tensor_differences(model, base, inventory_rows, base_inventory_rows) -> list:
    """One sentence per tensor that differs: the model's tensors in its inventory's order (missing
    from the base, or of another shape), then the base's tensors the model lacks."""
    mine, theirs = _shapes(inventory_rows), _shapes(base_inventory_rows)
    found = []
    for name, shape in mine.items():
        if name not in theirs:
            found.append(f"{model} has tensor {name} {_dims(shape)}, which base {base} lacks")
        elif theirs[name] != shape:
            found.append(f"tensor {name} is {_dims(shape)} in {model} and {_dims(theirs[name])} in base {base}")
    found += [f"base {base} has tensor {name} {_dims(shape)}, which {model} lacks"
              for name, shape in theirs.items() if name not in mine]
    return found


def check_same_tensors(model, base, inventory_rows, base_inventory_rows) -> int:
    """Raise a one-line BlockscopeError naming the first tensor that differs between `model` and
    its `base` (names and shapes of their whole-model inventories); the number of tensors paired."""
    found = tensor_differences(model, base, inventory_rows, base_inventory_rows)
    if found:
        more = f" ({len(found) - 1} more tensors differ)" if len(found) > 1 else ""
        raise BlockscopeError(f"{found[0]}{more}: a model and its base must hold the same tensors", model=model,
                              fix=f"set models.{model}.base to the checkpoint {model} was tuned from, or drop its base")
    return len(_shapes(inventory_rows))
