#!/usr/bin/env bash
# The inference engine's GPU checks, run on a lent device machine (results in docs/benchmarks.md).
# Expects onnxruntime-gpu unpacked in /tmp/site (the device image has only the CPU build) and the
# CUDA 13 libraries of the image's PyTorch (nvidia-* wheels) on disk.
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
LIBS=$(find "$SP/nvidia" -name "lib*.so*" -printf "%h\n" 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
nproc
python3 scripts/gpu_check.py --out "$OUT" 2>&1 | tail -20
for p in ${PROVIDERS:-cuda cpu}; do
  python3 - "$p" "$OUT" <<'PY'
import json, sys
from pathlib import Path
from streaming.bench.batching import run_batching_bench
p, out = sys.argv[1], Path(sys.argv[2])
plots = out / p if p == "cuda" else Path("/tmp/plots-cpu")
r = run_batching_bench(quick=True, out_dir=plots, say=print, provider=p)
(out / f"batching-{p}.json").write_text(json.dumps(r))
print(json.dumps({k: r[k] for k in ("max_rate_at_slo", "best_static", "adaptive_over_best_static",
                                    "adaptive_over_none", "step_violation_seconds", "targets")}))
PY
done
