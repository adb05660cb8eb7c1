"""Published GPU throughput: each device's datasheet peaks, the share of peak each operation is
assumed to reach, and the rates a prediction for a GPU that is not at hand divides by."""

# Published peaks (dense, no sparsity), FLOP/s and bytes/s. Sources: NVIDIA datasheets (H100
# Tensor Core GPU datasheet, SXM5 / PCIe columns; H200 datasheet; A100 datasheet, 80 GB SXM).
DEVICES = {
    "h100-sxm": {"name": "NVIDIA H100 SXM5", "fp64": 34e12, "fp64_tensor": 67e12, "fp32": 67e12, "hbm": 3.35e12},
    "h100-pcie": {"name": "NVIDIA H100 PCIe", "fp64": 26e12, "fp64_tensor": 51e12, "fp32": 51e12, "hbm": 2.0e12},
    "h200": {"name": "NVIDIA H200 SXM", "fp64": 34e12, "fp64_tensor": 67e12, "fp32": 67e12, "hbm": 4.8e12},
    "a100-sxm": {"name": "NVIDIA A100 SXM 80GB", "fp64": 9.7e12, "fp64_tensor": 19.5e12, "fp32": 19.5e12,
                 "hbm": 2.04e12},
}
DEFAULT_DEVICE = "h100-sxm"  # config plan.gpu's default
# The share of peak each operation reaches: assumptions, not measurements (no GPU was at hand).
# GEMM runs near peak; dense SVD and symmetric eigen reductions are half BLAS-2, bound by memory
# traffic: cuSOLVER's syevd reaches ~10 % of the fp64 peak on large n (MAGMA / cuSOLVER
# benchmarks), torch's svdvals (gesvdj / gesvd) about 1 % of the fp32 peak.
GPU_EFFICIENCY = {"gemm": 0.6, "svd": 0.01, "eigh": 0.1}
HOST_TO_DEVICE = 25e9  # bytes/s over PCIe gen5 x16, about half its nominal 64 GB/s (assumption)
CUDA_START_EXTRA_S = 1.0  # CUDA context creation on top of the measured torch import (assumption)


def published_rates(device: str) -> dict:
    """FLOP/s of each operation on a device from its published peaks x GPU_EFFICIENCY."""
    spec, eff = DEVICES[device], GPU_EFFICIENCY
    return {"gemm32": spec["fp32"] * eff["gemm"], "gemm64": spec["fp64_tensor"] * eff["gemm"],
            "qr32": spec["fp32"] * eff["svd"], "qr64": spec["fp64"] * eff["svd"],
            "bidiag32": spec["fp32"] * eff["svd"], "bidiag64": spec["fp64"] * eff["svd"],
            "eigh64": spec["fp64"] * eff["eigh"]}
