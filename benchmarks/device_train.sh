#!/usr/bin/env bash
# The training benchmarks of issue 8 on one H200, one device call per part (each fits the 10-minute
# call limit). Carry .whl/ (rapidfuzz for the CER of deepseek_ocr.evaluation; learning_run falls back
# to its own edit distance without it):
#   bash benchmarks/device_train.sh tests   # the grouped-expert GPU tests (~1 min)
#   bash benchmarks/device_train.sh bench   # bench_train: lines+page x lora+paper + packing (~7 min)
#   bash benchmarks/device_train.sh learn   # learning_run, 8 training minutes (~9.5 min)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if ! python -c "import rapidfuzz" 2>/dev/null && ls .whl/rapidfuzz-*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/rapidfuzz-*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python -c "import torch; print('torch', torch.__version__, 'grouped_mm', hasattr(torch, '_grouped_mm'))" | tee -a "$OUT/device.txt"
case "${1:-bench}" in
  tests) timeout 300 python -m pytest -q tests/test_grouped_experts.py 2>&1 | tail -15 | tee "$OUT/tests.log" ;;
  bench) timeout 560 python benchmarks/bench_train.py --workload all --mode all --packing --steps 8 \
           --json "$OUT/train.json" 2>&1 | tail -40 | tee "$OUT/bench_train.log" ;;
  learn) timeout 590 python benchmarks/learning_run.py --minutes 8 --out "$OUT/learning" 2>&1 | tail -60 \
           | tee "$OUT/learning.log" ;;
  *) echo "usage: $0 tests|bench|learn" >&2; exit 2 ;;
esac
