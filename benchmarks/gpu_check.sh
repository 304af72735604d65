#!/usr/bin/env bash
# The device check: one short script for a lent GPU machine (see BUILD_NOTES.md,
# "GPU"). Writes every table to $OUT (default ./gpu_out). Steps, in order:
#   1. the devices JAX sees;
#   2. the float64 analysis path on the GPU (README's library example);
#   3. bench_train --quick on 2 CPU cores (taskset), code before the flax
#      redesign (./.old, optional) and now, alternating, for the before/after
#      comparison on a quiet machine;
#   4. bench_train on the GPU against the jit(lax.scan) loop and the
#      sequential loop (depths 1-3 x widths 4, 16, 64 x 8 seeds: the full grid
#      and the PyTorch peer did not fit a 15-minute device lease).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: step 3 runs from ./.old too
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; }
log "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/log.txt"
PYTHONPATH=. python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/log.txt"
log "float64 analysis on the GPU (README example)"
PYTHONPATH=. timeout 120 python3 - <<'PY' 2>&1 | tail -5 | tee -a "$OUT/log.txt"
import re, time
t = time.time()
src = open("README.md").read()
example = re.findall(r"```python\n(.*?)```", src, re.S)[0]
namespace = {}
exec(example, namespace)
import jax
print("device:", jax.devices()[0], "refine:", namespace["result"].stop_reason,
      "seconds:", round(time.time() - t, 1))
PY
if [ -d .old/lminima ]; then
  for rep in 1 2; do
    log "CPU (2 cores) before the redesign, rep $rep"
    (cd .old && JAX_PLATFORMS=cpu PYTHONPATH=. timeout 150 taskset -c 0,1 python3 benchmarks/bench_train.py --quick --methods auto,per_width,masked,sequential --out "$OUT/cpu_before_$rep.md" > /dev/null 2>&1)
    log "CPU (2 cores) after, rep $rep"
    JAX_PLATFORMS=cpu PYTHONPATH=. timeout 150 taskset -c 0,1 python3 benchmarks/bench_train.py --quick --methods auto,per_width,masked,sequential --out "$OUT/cpu_after_$rep.md" > /dev/null 2>&1
  done
fi
log "GPU bench_train, full grid"
PYTHONPATH=. timeout ${GPU_BENCH_TIMEOUT:-330} python3 benchmarks/bench_train.py ${GPU_BENCH_ARGS:---widths 4,16,64 --reps 1 --methods auto,masked,scan,sequential} --out "$OUT/gpu_train.md" 2>&1 | tail -8 | tee -a "$OUT/log.txt"
log "done"
