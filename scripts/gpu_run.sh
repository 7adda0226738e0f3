#!/usr/bin/env bash
# The inference engine's GPU checks, run on a lent device machine (results in docs/batching.md).
# Expects onnxruntime-gpu unpacked in /tmp/site (the device image has only the CPU build) and the
# CUDA 13 libraries of the image's PyTorch (nvidia-* wheels) on disk.
#
#   CHECK=1     also run scripts/gpu_check.py (CUDA vs CPU scores, predict per bucket)
#   PROVIDERS   providers to benchmark (default: cuda)
#   PROBES, PROBE_S, PHASE_S   the batching benchmark's bisection steps, probe and step-phase
#               lengths (default: the full run's 6, 4 s, 10 s; about 14 minutes on the dev CPU); QUICK=1 for --quick
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
SP=$(python3 -c "import site; print(site.getsitepackages()[0])")
LIBS=$(find "$SP/nvidia" -name "lib*.so*" -printf "%h\n" 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$LIBS:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
nproc
if [ "${CHECK:-0}" = 1 ]; then python3 scripts/gpu_check.py --out "$OUT" 2>&1 | tail -20; fi
for p in ${PROVIDERS:-cuda}; do
  python3 - "$p" "$OUT" <<'PY'
import json, os, sys
from pathlib import Path
from streaming.bench.batching import run_batching_bench
p, out = sys.argv[1], Path(sys.argv[2])
env = lambda k, f: f(os.environ[k]) if os.environ.get(k) else None
r = run_batching_bench(quick=os.environ.get("QUICK") == "1", out_dir=out / p, say=print, provider=p,
                       probes=env("PROBES", int), probe_s=env("PROBE_S", float), phase_s=env("PHASE_S", float))
(out / f"batching-{p}.json").write_text(json.dumps(r))
print(json.dumps({k: r[k] for k in ("max_rate_at_slo", "best_static", "adaptive_over_best_static",
                                    "adaptive_over_none", "step_violation_seconds", "targets", "wall_s")}))
PY
done
