#!/usr/bin/env bash
# Fourth-round device runs (fifth session), each one device call:
#   bash benchmarks/device_round4.sh probe   # learning_run 1 training minute per preset (all, paper) with a
#                                            # profile of its step; bench_train page x paper profile (pinned views)
#   bash benchmarks/device_round4.sh server  # bench_server at concurrency 1 and 256 with py-spy samples
#   bash benchmarks/device_round4.sh learn ARGS...  # learning_run --minutes 7 ARGS (the run)
# Carry .whl/ (Pillow, rapidfuzz, the server's stack, py-spy) and .shared/.
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
phase=${1:-probe}; shift || true
case "$phase" in
probe)
  timeout 120 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/test_grouped_experts.py \
    > "$OUT/gpu_tests_train.log" 2>&1; tail -3 "$OUT/gpu_tests_train.log"
  for preset in all paper; do
    timeout 200 "$PY" benchmarks/learning_run.py --minutes 1.0 --preset $preset --eval-samples 16 --eval-every 100000 \
      --profile "$OUT/learn_profile_$preset.txt" --out "$OUT/learn_probe_$preset" > "$OUT/learn_probe_$preset.log" 2>&1
    grep -E "samples/s|done|Error" "$OUT/learn_probe_$preset.log" | tail -4
  done
  timeout 200 "$PY" benchmarks/bench_train.py --workload page --mode paper --steps 6 --no-check \
    --profile "$OUT/train_profile.txt" --json "$OUT/train_profile.json" > "$OUT/bench_train_profile.log" 2>&1
  grep -E "tokens/s|s/step" "$OUT/bench_train_profile.log" | tail -4
  ;;
server)
  [ -d /tmp/full ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
  timeout 420 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 1 256 --requests 6 256 \
    --max-tokens 1000 --spy "$OUT/spy" --out "$OUT/bench_server.json" > "$OUT/bench_server.log" 2>&1
  grep -E "^concurrency|wrote|Error|py-spy" "$OUT/bench_server.log" | tail -6; ls -la "$OUT/spy"; cat "$OUT"/spy/*.log | head
  ;;
learn)
  timeout 580 "$PY" benchmarks/learning_run.py --minutes 7 --out "$OUT/learning" "$@" > "$OUT/learning.log" 2>&1
  grep -E "CER|done|Error" "$OUT/learning.log" | tail -12
  ;;
learn2)  # two runs sharing the GPU (each is host-bound: ~30-50% GPU busy alone), 6 workers each
  timeout 580 "$PY" benchmarks/learning_run.py --minutes 6.5 --workers 6 --out "$OUT/learning_a" --preset paper \
    --batch 128 --lr 1e-3 --eval-every 200 > "$OUT/learning_a.log" 2>&1 &
  timeout 580 "$PY" benchmarks/learning_run.py --minutes 6.5 --workers 6 --out "$OUT/learning_b" --preset paper \
    --batch 128 --lr 3e-4 --eval-every 200 > "$OUT/learning_b.log" 2>&1 &
  wait
  for r in a b; do echo "== $r"; grep -E "CER|done|Error|samples/s" "$OUT/learning_$r.log" | tail -8; done
  ;;
verify)  # GPU tests of the changed kernels + the server at 1 and 256 (default and 4 prepare workers)
  "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout 200 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/kernels/test_moe_kernels.py tests/test_engine_gpu.py \
    > "$OUT/gpu_tests.log" 2>&1; tail -4 "$OUT/gpu_tests.log"
  [ -d /tmp/full ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
  timeout 240 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 1 256 --requests 6 256 \
    --max-tokens 1000 --out "$OUT/bench_server.json" > "$OUT/bench_server.log" 2>&1
  grep -E "^concurrency|Error" "$OUT/bench_server.log" | tail -4
  timeout 150 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 256 --requests 256 \
    --serve-arg=--prepare-workers --serve-arg=4 --max-tokens 1000 --out "$OUT/bench_server_w4.json" > "$OUT/bench_server_w4.log" 2>&1
  grep -E "^concurrency|Error" "$OUT/bench_server_w4.log" | tail -4
  ;;
final)  # the GPU tests touched last (sync-free objective, engine admission, grouped experts) + bench_train page x paper
  "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
  DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
    timeout 100 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/test_grouped_experts.py \
    tests/test_engine_gpu.py > "$OUT/gpu_tests.log" 2>&1; tail -4 "$OUT/gpu_tests.log"
  timeout 100 "$PY" benchmarks/bench_train.py --workload page --mode paper --steps 5 --warmup 2 --no-check \
    --json "$OUT/train_paper.json" > "$OUT/bench_train.log" 2>&1
  grep -E "tokens/s|s/step|Error|\| page" "$OUT/bench_train.log" | tail -4
  ;;
*) echo "usage: $0 probe|server|learn|learn2|verify|final" >&2; exit 2 ;;
esac
