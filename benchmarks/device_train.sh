#!/usr/bin/env bash
# The training benchmarks of issue 8 on one H200, one device call per part (each fits the 10-minute
# call limit). Carry .whl/ (rapidfuzz for the CER of deepseek_ocr.evaluation; learning_run falls back
# to its own edit distance without it):
#   bash benchmarks/device_train.sh tests   # the grouped-expert GPU tests (~1 min)
#   bash benchmarks/device_train.sh bench   # bench_train: lines+page x lora+paper + packing (~7 min)
#   bash benchmarks/device_train.sh learn   # learning_run, 6.5 training minutes (~9.5 min)
#   bash benchmarks/device_train.sh profile # bench_train page x paper with torch.profiler tables (~2 min)
set -u
PY=$(command -v python3 || command -v python)  # the image's python3 holds PyTorch
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# Every carried wheel (rapidfuzz; Pillow 13, which the image may lack) goes first on the path.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch, PIL, rapidfuzz, matplotlib; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'grouped_mm', hasattr(torch, '_grouped_mm'), 'pillow', PIL.__version__, 'rapidfuzz', rapidfuzz.__version__, 'matplotlib', matplotlib.__version__)" | tee -a "$OUT/device.txt"
case "${1:-bench}" in
  tests) timeout 300 "$PY" -m pytest -q -rs tests/test_grouped_experts.py 2>&1 | tee "$OUT/tests.log" ;;
  bench) timeout 560 "$PY" benchmarks/bench_train.py --workload all --mode all --packing --steps 8 \
           --json "$OUT/train.json" 2>&1 | tee "$OUT/bench_train.log" ;;
  learn) timeout 575 "$PY" benchmarks/learning_run.py --minutes 6.5 --out "$OUT/learning" 2>&1 \
           | tee "$OUT/learning.log" ;;
  profile) timeout 300 "$PY" benchmarks/bench_train.py --workload page --mode paper --steps 4 --no-check \
           --profile "$OUT/train_profile.txt" --json "$OUT/train_profile.json" 2>&1 | tee "$OUT/bench_train_profile.log" ;;
  *) echo "usage: $0 tests|bench|learn|profile" >&2; exit 2 ;;
esac
