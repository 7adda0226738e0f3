"""GPU check for the inference engine, run on a machine with an NVIDIA GPU and onnxruntime-gpu.

Loads the batching benchmark's MLP as a registry model three ways (CPU provider;
CUDA with IO binding and pinned host buffers; CUDA with plain ``session.run``),
checks that the scores agree on batch sizes that need padding and chunking,
and times each bucket. Prints one JSON object as its last line.

    python scripts/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streaming.bench.batching import D_IN, build_mlp
from streaming.inference.batching import default_buckets
from streaming.inference.providers import cuda_usable
from streaming.inference.registry import ModelRegistry
from streaming.inference.session import OnnxModel


def _time(model: OnnxModel, X: np.ndarray, reps: int = 50) -> dict[str, float]:
    for _ in range(5):
        model.predict(X)
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.predict(X)
        t.append(time.perf_counter() - t0)
    return {"p50_ms": round(float(np.median(t)) * 1e3, 4), "p99_ms": round(float(np.percentile(t, 99)) * 1e3, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result: dict[str, object] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
                                 "cuda_usable": cuda_usable()}
    print(json.dumps(result), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        reg = ModelRegistry(Path(tmp), "mlp")
        version = reg.write(build_mlp(), {"inputs": [f"x{i}" for i in range(D_IN)]})
        buckets = default_buckets(256)
        models = {
            "cpu": OnnxModel(version, provider="cpu", buckets=buckets),
            "cuda_iobinding": OnnxModel(version, provider="cuda", buckets=buckets),
            "cuda_run": OnnxModel(version, provider="cuda", buckets=buckets, io_binding=False),
        }
        result["providers"] = {k: m.provider for k, m in models.items()}
        result["io_binding"] = {k: m.io_binding for k, m in models.items()}
        b = models["cuda_iobinding"]._binding
        result["pinned"] = None if b is None else b.pinned
        rng = np.random.default_rng(0)
        agree = {}
        for n in (1, 7, 100, 256, 300):
            X = rng.standard_normal((n, D_IN)).astype(np.float32)
            ref = models["cpu"].predict(X)
            agree[str(n)] = {k: float(np.max(np.abs(m.predict(X) - ref))) for k, m in models.items() if k != "cpu"}
        result["max_abs_diff_vs_cpu"] = agree
        result["all_agree_1e-3"] = all(v <= 1e-3 for d in agree.values() for v in d.values())
        timing = {}
        for n in (1, 16, 64, 256):
            X = rng.standard_normal((n, D_IN)).astype(np.float32)
            timing[str(n)] = {k: _time(m, X) for k, m in models.items()}
            print(n, timing[str(n)], flush=True)
        result["predict_ms"] = timing
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
