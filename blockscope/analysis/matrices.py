"""The weight matrices of a stored tensor: which tensors hold one, how they come out of it
(transposed, or one per expert), their exact upcast to the compute dtype, and the work an SVD
of one scales with."""

from dataclasses import dataclass

import numpy as np

from blockscope.io.dtypes import numpy_dtype, safetensors_dtype


@dataclass
class Matrix:
    """One 2-D weight matrix, out x in, with where it came from."""
    param_name: str
    expert: int | None
    values: np.ndarray

    @property
    def name(self) -> str:
        return self.param_name if self.expert is None else f"{self.param_name}[{self.expert}]"


EXPERT_STACK = "moe_expert"  # the block type whose 3-D tensors stack one matrix per expert


def not_a_matrix(dtype: str, shape, block_type: str) -> str | None:
    """Why a stored tensor of rank 2 or more holds no weight matrix to analyse (None when it
    does). Integer and bool tensors are indices, masks or packed codes, not weights; a 3-D
    tensor is split only as an expert stack; rank 4 and more is never guessed at."""
    kind = numpy_dtype(dtype).kind
    if kind in "iub":
        what = "bool" if kind == "b" else "integer"
        return f"{what} tensor ({dtype}): not a weight matrix"
    rank, dims = len(shape), "x".join(map(str, shape))
    if rank == 3 and block_type != EXPERT_STACK:
        return f"3-D tensor ({dims}) that is not an expert stack: not analysed"
    if rank >= 4:
        return f"{rank}-D tensor ({dims}): not analysed"
    return None


def matrices_of(param_name: str, array: np.ndarray, layout: str = "out_in", block_type: str | None = None):
    """The 2-D matrices in a stored tensor: itself, transposed when stored in x out (GPT-2
    Conv1D), or one per expert for a 3-D expert stack (block_type moe_expert). 1-D tensors hold
    none; any other tensor is refused (ValueError): not_a_matrix says why, and the caller
    reports it instead of analysing a guess."""
    if array.ndim < 2:
        return
    problem = not_a_matrix(safetensors_dtype(array.dtype), array.shape, block_type)
    if problem is not None:
        raise ValueError(f"{param_name}: {problem}")
    if array.ndim == 2:
        yield Matrix(param_name, None, array.T if layout == "in_out" else array)
    else:
        for expert in range(array.shape[0]):
            yield Matrix(param_name, expert, array[expert])


def upcast(matrix: np.ndarray, compute_dtype) -> np.ndarray:
    """Exact upcast of a stored matrix (bf16/fp16/fp8/fp32) to the compute dtype."""
    return np.ascontiguousarray(matrix, dtype=compute_dtype)


def work(shape) -> float:
    """rows x cols x min(rows, cols): what an SVD or a Gram product of the matrix scales with."""
    rows, cols = shape
    return float(rows) * cols * min(rows, cols)
