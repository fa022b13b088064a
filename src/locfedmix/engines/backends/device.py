"""Where a run computes: `engine.device` resolved to a torch.device, with CUDA made deterministic so that the same
config and seed give the same numbers on a GPU too (cuDNN autotuning off, deterministic kernels)."""

import os

import torch

from locfedmix.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` → the first CUDA device when there is one, else the CPU; `cuda[:N]` must exist."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count or not count:
            raise UserError(f"engine.device={name!r} but this machine has {count} CUDA device(s); "
                            "use 'auto' or 'cpu'")
        make_cuda_deterministic()
    return device


def make_cuda_deterministic() -> None:
    """cuBLAS needs its workspace pinned before first use; scatter-style backward kernels need the deterministic
    switch. `warn_only` keeps an op without a deterministic kernel usable (it warns instead of failing). TF32
    convolutions round inputs to 10 mantissa bits (losses then drift ~1e-3 from the CPU's after a few steps, as
    benchmarks/device_check.py measured on an H200), so float32 stays float32."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
