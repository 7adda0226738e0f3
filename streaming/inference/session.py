"""An ONNX model loaded for scoring."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from streaming.errors import ModelError
from streaming.inference.providers import choose_providers
from streaming.inference.registry import ModelVersion

__all__ = ["OnnxModel"]


class OnnxModel:
    """A session for one model version; :meth:`predict` returns P(positive) per row."""

    def __init__(self, version: ModelVersion, *, provider: str = "auto", threads: int = 1) -> None:
        self.version = version
        data = version.verify()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=choose_providers(provider))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{version.onnx_path} cannot be loaded by ONNX Runtime: {exc}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{version.onnx_path}: expected one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != len(version.inputs):
            raise ModelError(f"{version.onnx_path}: input width {width} but metadata lists {len(version.inputs)} inputs")
        outs = [o.name for o in self.session.get_outputs()]
        self.output_name = "probabilities" if "probabilities" in outs else outs[-1]
        self.provider = self.session.get_providers()[0]
        self.predict(np.zeros((1, len(version.inputs)), dtype=np.float32))  # warm up

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def tag(self) -> str:
        return self.version.version

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: X})[0]
        out = np.asarray(out)
        return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out.reshape(-1)
