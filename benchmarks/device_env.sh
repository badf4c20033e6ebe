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
