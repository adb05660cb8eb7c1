"""blockscope: the spectral anatomy of transformer checkpoints.

The public reading API is small and lazy, like safetensors':
    read_unit(path, names=None) -> {param_name: numpy array in its stored dtype}
    iter_unit(path, names=None) -> (param_name, array) one tensor at a time
    unit_names(path)            -> the parameter names of a unit file
"""

from .tensors import iter_unit, read_unit, unit_names

__all__ = ["read_unit", "iter_unit", "unit_names"]
