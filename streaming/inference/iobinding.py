"""CUDA IO binding: device buffers bound once per batch-size bucket, fed from pinned host memory.

On the CUDA provider a plain ``session.run`` allocates device memory for the
input and output and copies from pageable host memory on every call. Here each
bucket gets its own :class:`onnxruntime.IOBinding` with a device input and a
device output allocated at load; a batch is written into a page-locked
(pinned) host buffer, copied to the device input in one transfer, run, and the
output copied back. Pinned memory comes from ``cudaHostAlloc`` through ctypes
(ONNX Runtime's Python API does not expose its pinned allocator); where that
fails the staging buffer is ordinary memory and the copy is merely slower.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

__all__ = ["CudaBinding", "pinned_empty"]

log = logging.getLogger(__name__)

_CUDART = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


def _cudart() -> ctypes.CDLL | None:
    for name in _CUDART:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class _Pinned:
    """Page-locked host memory, freed when the object goes."""

    def __init__(self, nbytes: int) -> None:
        self.ptr = ctypes.c_void_p()
        self.lib = _cudart()
        if self.lib is None or self.lib.cudaHostAlloc(ctypes.byref(self.ptr), ctypes.c_size_t(nbytes), 0) != 0:
            raise OSError("cudaHostAlloc failed")
        self.nbytes = nbytes

    def __del__(self) -> None:
        if getattr(self, "lib", None) is not None and self.ptr:
            self.lib.cudaFreeHost(self.ptr)  # type: ignore[union-attr]


def pinned_empty(shape: tuple[int, ...], dtype: type = np.float32) -> tuple[np.ndarray, _Pinned | None]:
    """An array in pinned host memory and the block that owns it (keep it alive as long as the array),
    or an array in ordinary memory and None where pinning fails."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        block = _Pinned(nbytes)
    except OSError:
        return np.empty(shape, dtype=dtype), None
    raw = (ctypes.c_byte * nbytes).from_address(block.ptr.value or 0)
    return np.frombuffer(memoryview(raw), dtype=dtype).reshape(shape), block


class CudaBinding:
    """One IO binding per bucket on device ``device_id``; :meth:`run` scores up to the largest bucket."""

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str, width: int,
                 buckets: Sequence[int], device_id: int = 0) -> None:
        self.session = session
        self.output_name = output_name
        self.buckets = tuple(buckets)
        self.staging, self._pinned_block = pinned_empty((self.buckets[-1], width))
        self.pinned = self._pinned_block is not None
        self.staging[:] = 0.0
        self._bound: dict[int, tuple[ort.IOBinding, ort.OrtValue]] = {}
        out_meta = next(o for o in session.get_outputs() if o.name == output_name)
        for b in self.buckets:
            dev_in = ort.OrtValue.ortvalue_from_shape_and_type((b, width), np.float32, "cuda", device_id)
            io = session.io_binding()
            io.bind_ortvalue_input(input_name, dev_in)
            # the output's shape depends on the model (probabilities: (b, 2); a score: (b,) or (b, 1)):
            # bind it to the device and let ONNX Runtime allocate it once per run of that bucket
            io.bind_output(out_meta.name, "cuda", device_id)
            self._bound[b] = (io, dev_in)
        if not self.pinned:
            log.warning("pinned host memory unavailable: CUDA inputs are copied from pageable memory")

    def run(self, X: np.ndarray, bucket: int) -> np.ndarray:
        n = X.shape[0]
        io, dev_in = self._bound[bucket]
        view = self.staging[:bucket]
        view[:n] = X
        if n < bucket:
            view[n:] = 0.0
        dev_in.update_inplace(view)  # cudaMemcpy: from pinned memory it returns once the data is on the device
        if not self.pinned:
            io.synchronize_inputs()
        self.session.run_with_iobinding(io)
        return np.asarray(io.copy_outputs_to_cpu()[0])[:n]  # waits for the run
