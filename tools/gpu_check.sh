#!/usr/bin/env bash
# The GPU checks of issue [2.5] in one command, for a session that is lent a GPU (docs/TRAINING.md, "Measuring the
# GPU path"). Prepare the wheels first, where pip works (`make gpu-wheels`: .whl/, ignored by git), then call the
# device tool once:
#
#   run(command="bash tools/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# On the device machine it (1) installs the carried wheels into /tmp/site, (2) runs the `-m gpu` tests, (3) runs
# tools/gpu_figures.py with what is left of the time budget. Everything goes to $OUT (comes back from the device):
# env.txt, pip.log, pytest-gpu.log, figures.log, gpu_figures.json, gpu_figures.md. Each step has its own time limit
# and the whole stays under GPU_CHECK_BUDGET_S (default 450 s, 7.5 minutes). Exit status: 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
PY=${PYTHON:-python3}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
left() { echo $((BUDGET - ($(date +%s) - START))); }
status=0

# 1. the carried wheels (diffusers, constriction: tools/gpu_wheels.py); the machine's own torch, numpy, ... stay
if compgen -G ".whl/*.whl" >/dev/null; then
    if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1; then
        export PYTHONPATH="/tmp/site:$PWD"
    else
        echo "installing .whl/*.whl failed:"; tail -5 "$OUT/pip.log"; exit 3
    fi
else
    echo "no wheels in .whl/: run 'make gpu-wheels' where pip works and carry .whl" | tee "$OUT/pip.log"
    export PYTHONPATH="$PWD"
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv
    "$PY" -c "import sys, torch, diffusers, constriction; print(sys.version.split()[0], 'torch', torch.__version__,
        'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if ! timeout 60 "$PY" -c "import codec.diffvc.codec, codec.speed, tools.gpu_figures" >>"$OUT/env.txt" 2>&1; then
    echo "the library does not import here:"; tail -5 "$OUT/env.txt"; exit 3
fi

# 2. the -m gpu tests (only the files that hold some: the others import the app, whose packages are not carried)
echo "[$(( $(date +%s) - START )) s] pytest -m gpu"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider $(grep -l "mark.gpu" tests/test_*.py) \
    >"$OUT/pytest-gpu.log" 2>&1 || status=1
tail -3 "$OUT/pytest-gpu.log"

# 3. the figures, with what is left (the script starts no job that would not fit; the timeout is the backstop)
budget=$(( $(left) - 100 ))
echo "[$(( $(date +%s) - START )) s] tools.gpu_figures, ${budget} s budget"
timeout $(( $(left) - 5 )) "$PY" -m tools.gpu_figures --out "$OUT" --device cuda --budget-s "$budget" \
    >"$OUT/figures.log" 2>&1 || status=1
grep -v "^    " "$OUT/figures.log" | tail -60
echo "[$(( $(date +%s) - START )) s] done, status $status"
exit $status
