#!/usr/bin/env bash
# Device runs for the engine (each phase fits one 10-minute device call):
#   bash benchmarks/device_engine.sh tests   # GPU tests: engine (graphs, growth, switches, bf16), kernels, parity
#   bash benchmarks/device_engine.sh bench   # bench_engine.py (variable lengths, TTFT, encode, b1 decode, memory)
#                                            # + bench_pages.py (256 Gundam pages x 1,000 tokens, the pipeline)
#   bash benchmarks/device_engine.sh check   # the GPU tests (as `tests`, shorter limit) + profile_step.py
#   bash benchmarks/device_engine.sh profile # profile_step.py (the step at 1 and 256 rows, the encode)
#                                            # + bench_server.py (deepseek-ocr serve at concurrency 1, 64, 256)
#   bash benchmarks/device_engine.sh round3a # every GPU test + bench_pages.py (twice: first run, steady state)
#   bash benchmarks/device_engine.sh round3b # bench_server.py (1, 256) + bench_engine.py (queue, variable)
# Needs .shared/ (a copy of ../shared without train_golden_small) and .whl/ (Pillow 13 wheel) carried.
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
    timeout 500 python -m pytest -q -rs -p no:hypothesispytest tests/test_engine_gpu.py tests/kernels \
    tests/test_fast_decode.py tests/test_generation.py tests/test_engine.py tests/test_parity.py \
    2>&1 | tail -80 > "$OUT/gpu_tests.log"
  tail -30 "$OUT/gpu_tests.log"
  ;;
bench)
  timeout 330 python benchmarks/bench_engine.py --out "$OUT/bench_engine.json" 2>&1 | tail -40
  timeout 200 python benchmarks/bench_pages.py --pages 256 --tokens 1000 --batch-size 256 --workers 12 \
    --out "$OUT/bench_pages.json" 2>&1 | tail -20
  ;;
check)
  python .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout 300 python -m pytest -q -rs -p no:hypothesispytest tests/test_engine_gpu.py tests/kernels \
    tests/test_fast_decode.py tests/test_generation.py tests/test_engine.py tests/test_parity.py \
    > "$OUT/gpu_tests.log" 2>&1
  tail -30 "$OUT/gpu_tests.log"
  timeout 200 python benchmarks/profile_step.py --out "$OUT/profile.txt" > "$OUT/profile.log" 2>&1
  grep -E "^==|Engine.step wall|kernels per call|GPU busy" "$OUT/profile.txt"; tail -3 "$OUT/profile.log"
  ;;
bench1)  # the GPU tests touched last + bench_engine.py (one call)
  python .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout 120 python -m pytest -q -rs -p no:hypothesispytest tests/kernels/test_norm_rope.py tests/test_engine_gpu.py \
    > "$OUT/gpu_tests2.log" 2>&1; tail -3 "$OUT/gpu_tests2.log"
  timeout 420 python benchmarks/bench_engine.py --out "$OUT/bench_engine.json" > "$OUT/bench_engine.log" 2>&1
  grep -v "^ " "$OUT/bench_engine.log" | tail -12
  ;;
bench2)  # bench_pages.py (the command's pipeline) + bench_server.py (one call)
  timeout 170 python benchmarks/bench_pages.py --pages 256 --tokens 1000 --batch-size 256 --workers 12 \
    --out "$OUT/bench_pages.json" 2>&1 | tail -8
  timeout 330 python benchmarks/bench_server.py --model /tmp/full --concurrency 1 16 64 256 --max-tokens 1000 \
    --out "$OUT/bench_server.json" 2>&1 | grep -v " 200 OK" | tail -12
  ;;
round3a)
  python .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout 300 python -m pytest -q -rs -p no:hypothesispytest tests/test_engine_gpu.py tests/test_grouped_experts.py \
    tests/kernels tests/test_fast_decode.py tests/test_generation.py tests/test_engine.py tests/test_parity.py \
    > "$OUT/gpu_tests.log" 2>&1
  tail -15 "$OUT/gpu_tests.log"
  timeout 240 python benchmarks/bench_pages.py --pages 256 --tokens 1000 --batch-size 256 --workers 12 \
    --out "$OUT/bench_pages.json" > "$OUT/bench_pages.log" 2>&1; grep '"run"' "$OUT/bench_pages.log"; tail -2 "$OUT/bench_pages.log"
  ;;
round3b)
  timeout 240 python benchmarks/bench_server.py --model /tmp/full --concurrency 1 256 --requests 6 256 \
    --max-tokens 1000 --out "$OUT/bench_server.json" > "$OUT/bench_server.log" 2>&1
  grep -E "^concurrency|wrote|Error" "$OUT/bench_server.log" | tail -6
  timeout 330 python benchmarks/bench_engine.py --skip encode,ttft,decode_b1,memory --static-batches 64,256 \
    --out "$OUT/bench_engine.json" > "$OUT/bench_engine.log" 2>&1
  grep -E "^(queue|variable)" "$OUT/bench_engine.log" | cut -c1-600; tail -2 "$OUT/bench_engine.log"
  ;;
profile)
  timeout 240 python benchmarks/profile_step.py --out "$OUT/profile.txt" > "$OUT/profile.log" 2>&1; tail -5 "$OUT/profile.log"
  timeout 300 python benchmarks/bench_server.py --model /tmp/full --concurrency 1 64 256 --max-tokens 1000 \
    --out "$OUT/bench_server.json" 2>&1 | grep -v " 200 OK" | tail -20
  ;;
esac
