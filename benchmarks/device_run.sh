#!/usr/bin/env bash
# One device call: the float32 parity and generation suites on CUDA, then the bf16 reference timing.
# Needs a copy of ../shared at .shared/ (carried; ../shared does not travel to the device).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
# The recorded pixel hashes were made with Pillow 13.0 (its bicubic resize); carry that wheel in .whl/.
if ls .whl/pillow-*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/pillow-*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python -c "import torch, triton, PIL; print('torch', torch.__version__, 'triton', triton.__version__, 'pillow', PIL.__version__)" | tee -a "$OUT/device.txt"
python .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 | tee -a "$OUT/device.txt"
DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
  timeout 300 python -m pytest -q tests/test_parity.py tests/test_generation.py 2>&1 | tail -30 | tee "$OUT/gpu_tests.log"
timeout 240 python benchmarks/reference_path.py --folder /tmp/full --new-tokens 32 2>&1 | tail -30 | tee "$OUT/reference_path.json"
