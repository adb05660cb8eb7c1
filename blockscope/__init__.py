"""blockscope: the spectral anatomy of transformer checkpoints.

The public reading API is small and lazy, like safetensors':
    read_unit(path, names=None) -> {param_name: numpy array in its stored dtype}
    iter_unit(path, names=None) -> (param_name, array) one tensor at a time
    unit_names(path)            -> the parameter names of a unit file
"""

__all__ = ["read_unit", "iter_unit", "unit_names"]


def __getattr__(name):
    """The reading API, imported on first use: a job that only needs a light module (the GPU
    slots, the layout) does not pay numpy and pyarrow for it."""
    if name in __all__:
        from blockscope.io import tensors

        return getattr(tensors, name)
    raise AttributeError(f"module 'blockscope' has no attribute {name!r}")
