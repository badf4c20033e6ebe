#!/usr/bin/env bash
# Fifth-round device runs (sixth session), each one device call:
#   bash benchmarks/device_round5.sh learn3   # three learning runs sharing the GPU (each host-bound), 6.5
#                                             # training minutes: a = defaults (paper, lr 3e-4, jitter 0),
#                                             # b = paper lr 1e-3, c = tower-frozen lr 1e-3
#   bash benchmarks/device_round5.sh learn4   # one run alone (processes sharing the GPU time-slice it,
#                                             # which learn3 showed costs each host-bound run 3x): tower-frozen,
#                                             # batch 256 (the step's host cost is per step, not per sample), lr 2e-3
# Carry .whl/ (Pillow, rapidfuzz, the server's stack, py-spy) and .shared/ where tests run.
# Only a few files come back from a call, so runs write under /tmp/r5 and are packed into one .tgz.
set -u
PY=$(command -v python3 || command -v python)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/benchmarks
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH PATH=/tmp/site/bin:$PATH
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; R=/tmp/r5; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
phase=${1:-learn3}; shift || true
case "$phase" in
learn3)
  run() { name=$1; shift; timeout 570 "$PY" benchmarks/learning_run.py --minutes 6.5 --workers 4 --out "$R/learning_$name" "$@" \
            > "$R/learning_$name.log" 2>&1; }
  run a &
  run b --lr 1e-3 &
  run c --preset tower-frozen --lr 1e-3 &
  wait
  for r in a b c; do echo "== $r"; grep -E "CER|done|Error|samples/s" "$R/learning_$r.log" | tail -14; cp "$R/learning_$r.log" "$OUT/"; done
  tar czf "$OUT/learning_r5.tgz" -C $R .
  ;;
learn4)
  timeout 575 "$PY" benchmarks/learning_run.py --minutes 7.5 --workers 12 --out "$R/learning_d" --preset tower-frozen \
    --batch 256 --lr 2e-3 --warmup 50 --eval-every 250 "$@" > "$R/learning_d.log" 2>&1
  grep -E "CER|done|Error|samples/s" "$R/learning_d.log" | tail -30; cp "$R/learning_d.log" "$OUT/"
  tar czf "$OUT/learning_r5d.tgz" -C $R .
  ;;
*) echo "usage: $0 learn3|learn4" >&2; exit 2 ;;
esac
