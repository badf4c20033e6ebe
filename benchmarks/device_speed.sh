#!/usr/bin/env bash
# Device runs for the speed work, in two phases (each fits one 10-minute device call):
#   bash benchmarks/device_speed.sh tests   # GPU tests (kernels at real sizes, fast path, parity) + kernel benchmarks
#   bash benchmarks/device_speed.sh e2e     # end-to-end contenders (bench_decode.py) + the 256-page pipeline run
#   bash benchmarks/device_speed.sh pages   # the 256-page pipeline run + a kernel profile of one decode step and one encode
# Needs .shared/ (a copy of ../shared) and .whl/ (Pillow 13 wheel) carried; see device_run.sh.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/benchmarks
if ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
case "${1:-tests}" in
tests)
  python .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout 330 python -m pytest -q -rs tests/kernels tests/test_fast_decode.py tests/test_parity.py tests/test_generation.py \
    2>&1 | tail -60 > "$OUT/gpu_tests.log"
  tail -5 "$OUT/gpu_tests.log"
  for b in moe attention sam_attention; do
    timeout 75 python benchmarks/bench_$b.py --out "$OUT/bench_$b.json" > "$OUT/bench_$b.md" 2>&1
    tail -25 "$OUT/bench_$b.md"
  done
  ;;
e2e)
  timeout 420 python benchmarks/bench_decode.py --compile --out "$OUT/bench_decode.json" 2>&1 | tail -50
  timeout 150 python benchmarks/bench_pages.py --pages 256 --tokens 1000 --out "$OUT/bench_pages.json" 2>&1 | tail -20
  ;;
pages)
  timeout 200 python benchmarks/bench_pages.py --pages 256 --tokens 1000 --out "$OUT/bench_pages.json" 2>&1 | tail -20
  timeout 150 python benchmarks/profile_step.py --out "$OUT/profile.txt" 2>&1 | grep -E "kernels per step|Gundam page encode"
  ;;
esac
