# Sourced (`. benchmarks/device_env.sh`) by the device_round*.sh scripts, from the repository root:
# the python that holds PyTorch as $PY, the carried wheels (.whl/) installed under /tmp/site and
# put first on the paths, $OUT created, and the device and versions written to $OUT/device.txt.
PY=$(command -v python3 || command -v python)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/benchmarks
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PYTHONPATH PATH=/tmp/site/bin:$PATH
fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

# The full-size random checkpoint in /tmp/full (kept while the machine is held).
full_checkpoint() {
  [ -f /tmp/full/config.json ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
}
# gpu_tests LOG SECONDS TEST...: the given tests on CUDA against the small parity checkpoint
# (needs the carried .shared/), the log's tail printed.
gpu_tests() {
  local log=$1 limit=$2; shift 2
  [ -f /tmp/ck/config.json ] || "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout "$limit" "$PY" -m pytest -q -rs -p no:hypothesispytest "$@" > "$log" 2>&1
  tail -25 "$log"
}
