"""An ONNX model loaded for scoring: fixed batch-size buckets, each warmed at load.

A batch of ``n`` rows runs as the smallest bucket that holds it, padded with
zero rows (a batch larger than the largest bucket runs in chunks of it), so no
request pays for a shape the session has not seen (on the GPU a new shape can
cost an algorithm search). On the CUDA provider the buckets run through IO
binding with pinned host buffers (:mod:`streaming.inference.iobinding`).

Thread settings suit a 2-core machine: one intra-op thread by default (the
event loop, the broker and Redis need the other core), one inter-op thread,
and no spin-waiting in ONNX Runtime's thread pool (spinning burns a core the
rest of the worker needs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from streaming.errors import ModelError
from streaming.inference.batching.buckets import bucket_for, check_buckets, default_buckets, pad
from streaming.inference.iobinding import CudaBinding
from streaming.inference.providers import choose_providers
from streaming.inference.registry import ModelVersion

__all__ = ["OnnxModel"]

log = logging.getLogger(__name__)


class OnnxModel:
    """A session for one model version; :meth:`predict` returns P(positive) per row.

    Parameters
    ----------
    version
        The registry entry (the file is verified against its sha256 first).
    provider
        ``auto`` (CUDA when it can really load, else CPU), ``cuda`` or ``cpu``.
    threads
        ONNX Runtime intra-op threads.
    buckets
        Batch sizes the session serves and warms (default: :func:`default_buckets` of 512).
    io_binding
        On CUDA, run through IO binding with pinned host buffers (default); False uses ``session.run``.
    """

    def __init__(self, version: ModelVersion, *, provider: str = "auto", threads: int = 1,
                 buckets: Sequence[int] | None = None, io_binding: bool = True) -> None:
        self.version = version
        self.buckets = check_buckets(buckets if buckets is not None else default_buckets(512))
        data = version.verify()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=choose_providers(provider))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{version.onnx_path} cannot be loaded by ONNX Runtime: {exc}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{version.onnx_path}: expected one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        self.width = len(version.inputs)
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != self.width:
            raise ModelError(f"{version.onnx_path}: input width {width} but metadata lists {self.width} inputs")
        outs = [o.name for o in self.session.get_outputs()]
        self.output_name = "probabilities" if "probabilities" in outs else outs[-1]
        self.provider = self.session.get_providers()[0]
        self._binding: CudaBinding | None = None
        if self.provider == "CUDAExecutionProvider" and io_binding:
            self._binding = CudaBinding(self.session, self.input_name, self.output_name, self.width, self.buckets)
        #: seconds per bucket of the warm-up runs after the first (first samples for a batch policy's service model)
        self.warmup_s: dict[int, list[float]] = {}
        self.warm()

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def tag(self) -> str:
        return self.version.version

    @property
    def io_binding(self) -> bool:
        return self._binding is not None

    def warm(self, rounds: int = 3) -> None:
        """Run every bucket ``rounds`` times so that no request pays for a first shape."""
        for b in self.buckets:
            X = np.zeros((b, self.width), dtype=np.float32)
            self._run(X, b)
            times = []
            for _ in range(rounds - 1):
                t0 = time.perf_counter()
                self._run(X, b)
                times.append(time.perf_counter() - t0)
            self.warmup_s[b] = times

    def _run(self, X: np.ndarray, bucket: int) -> np.ndarray:
        if self._binding is not None:
            out = self._binding.run(X, bucket)
        else:
            n = X.shape[0]
            out = np.asarray(self.session.run([self.output_name], {self.input_name: pad(X, bucket)})[0])[:n]
        return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.reshape(-1)

    def runs_inline(self, rows: int, *, below_s: float = 0.0005) -> bool:
        """Whether a batch of ``rows`` is cheap enough to run on the caller's thread: a CPU session whose
        warm-up runs of that bucket took under ``below_s`` at the median. Handing such a batch to an
        inference thread costs more than running it (a thread wake-up and a GIL round trip per batch)."""
        if self.provider != "CPUExecutionProvider" or rows > self.buckets[-1]:
            return False
        times = self.warmup_s.get(bucket_for(max(rows, 1), self.buckets))
        return bool(times) and sorted(times)[len(times) // 2] < below_s  # type: ignore[arg-type]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """P(positive) for each row of ``X`` (any number of rows; padded to buckets)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        n = X.shape[0]
        top = self.buckets[-1]
        if n <= top:
            return self._run(X, bucket_for(max(n, 1), self.buckets)) if n else np.zeros(0)
        return np.concatenate([self._run(X[i:i + top], bucket_for(min(top, n - i), self.buckets))
                               for i in range(0, n, top)])
