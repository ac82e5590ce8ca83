#!/usr/bin/env bash
# What a session with a GPU lease runs, in one call, so that the lease (15 minutes on one chip, the
# machine's start included) goes to measuring rather than to composing commands:
#
#     run(command="bash benchmarks/gpu_session.sh", timeout_s=560)
#
# On the device machine the working tree is a copy and only $OUT comes back, so every result lands
# there: gpu_tables.md (gpu.py's tables, one per family: put them into benchmarks/RESULTS.md),
# gpu.log, tune.log, the tuning cache's files, device.txt. Each step has its own
# time limit, so a slow one cannot starve the next; a step that fails leaves the others running.
# Nothing is installed: the device image has torch, triton, sympy, jinja2 and networkx, and the
# project runs from the checkout (PYTHONPATH).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/ssmc_gpu_session}"
mkdir -p "$OUT"
export SSMC_CACHE_DIR="${SSMC_CACHE_DIR:-/tmp/ssmc_gpu_cache}"   # its tuning/*.json are copied to $OUT
PY="${PYTHON:-python3}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
          'cuda', torch.cuda.is_available())"
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# 1. each family checked at real sizes against float64 and timed (both Mamba-1 schedules), one gpu.py run
#    per family with its own limit (the first calls autotune: every planned config compiles once), each
#    writing its own table; they are joined into gpu_tables.md, whose sections go into RESULTS.md
: > "$OUT/gpu.log"
for family_limit in mamba1:180 mamba2:80 gla:50 s5:40; do
    family=${family_limit%%:*}
    timeout "${family_limit##*:}" "$PY" benchmarks/gpu.py --only "$family" --out "/tmp/gpu_$family.md" 2>&1 \
        | tee -a "$OUT/gpu.log"
    echo "gpu.py --only $family: exit ${PIPESTATUS[0]}" | tee -a "$OUT/gpu.log"
    cat "/tmp/gpu_$family.md" >> "$OUT/gpu_tables.md" 2>/dev/null
done

# 2. Mamba-1's schedules and decoding step tuned at the benchmark's shape, then Mamba-2's pipelines and the
#    stages of the winner (every planned config of chunk_state, state_passing, chunk_scan at each call);
#    the winners go to the cache
timeout 90 "$PY" -m ssmc tune examples/mamba.py --shape batch=8,len=2048,dim=1536 2>&1 | tee "$OUT/tune.log"
echo "ssmc tune mamba: exit ${PIPESTATUS[0]}" | tee -a "$OUT/tune.log"
timeout 90 "$PY" -m ssmc tune examples/mamba2.py --shape batch=8,len=2048,heads=24 --repeats 2 2>&1 \
    | tee -a "$OUT/tune.log"
echo "ssmc tune mamba2: exit ${PIPESTATUS[0]}" | tee -a "$OUT/tune.log"

# the tuning cache's files, flattened (only files two folders down come back)
cp "$SSMC_CACHE_DIR"/tuning/*.json "$OUT/" 2>/dev/null
ls -l "$OUT"
