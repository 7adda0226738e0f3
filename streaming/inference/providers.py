"""Choosing the ONNX Runtime execution provider without noisy failures.

Asking ONNX Runtime for the CUDA provider on a machine that cannot load it
logs a loud error before falling back. We check first: the provider must be
compiled in, a CUDA driver with at least one device must answer, and the
provider library with its CUDA dependencies must load.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import onnxruntime as ort

from streaming.errors import ConfigError

__all__ = ["cuda_usable", "choose_providers"]


@functools.cache
def cuda_usable() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        if driver.cuInit(0) != 0:
            return False
        count = ctypes.c_int(0)
        if driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False
        lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
        if lib.exists():
            ctypes.CDLL(str(lib))  # fails when cuBLAS/cuDNN/cudart are missing
    except OSError:
        return False
    return True


def choose_providers(setting: str) -> list[str]:
    """Providers for a session: ``auto`` picks CUDA when it can load."""
    if setting == "cpu":
        return ["CPUExecutionProvider"]
    if setting == "cuda":
        if not cuda_usable():
            raise ConfigError("STREAMING_ONNX_PROVIDER=cuda but the CUDA provider cannot load here: use auto or cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return (["CUDAExecutionProvider"] if cuda_usable() else []) + ["CPUExecutionProvider"]
