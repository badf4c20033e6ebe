#!/usr/bin/env bash
# Device runs of the twelfth session, three calls back to back on one held machine (carry .whl/;
# `b` also .shared/):
#   bash benchmarks/device_round13.sh a   # `paper` on "page": bf16, fp32 (the trainer's), float32 masters,
#                                         # twice in one process order each (bench_train --weights all)
#   bash benchmarks/device_round13.sh b   # the GPU tests of training and the engine; the server at a burst
#                                         # of 256 with 4, 8, 12 preparing threads and 8 processes
#   bash benchmarks/device_round13.sh c   # the learning run, 8 training minutes, AdamW beta2 0.95
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint, gpu_tests
case "${1:-}" in
  a)
    full_checkpoint
    for i in 1 2; do
      timeout 170 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights all --steps 6 --warmup 2 \
        --no-check --checkpoint /tmp/full --json "$OUT/train_paper_all_$i.json" > "/tmp/paper_$i.log" 2>&1
      echo "call $i rc=$?"; grep -E '^\| page|Error' "/tmp/paper_$i.log"
    done
    ;;
  b)
    gpu_tests "$OUT/gpu_tests.log" 150 tests/test_training_gpu.py tests/test_grouped_experts.py tests/test_engine_gpu.py
    full_checkpoint
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    for run in 4a:4 8:8 12:12 p8:8 4b:4; do
      n=${run#*:}; name=${run%%:*}; how=--prepare-workers; [ "${name:0:1}" = p ] && how=--prepare-processes
      timeout 75 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=$how --serve-arg=$n \
        --out "$OUT/bench_server_prep$name.json" > "/tmp/prep$name.log" 2>&1
      echo "$how $n ($name) rc=$?"; grep -E "pages/s|preparing" "/tmp/prep$name.log"
    done
    ;;
  c)  # the seventh session's best configuration (CER 0.243 at 8 minutes) with beta2 0.95
    timeout 585 "$PY" benchmarks/learning_run.py --minutes 8 --preset paper --lr 3e-4 --beta2 0.95 --batch 64 \
      --workers 12 --eval-every 750 --out "$OUT/learning13" > "$OUT/learning13.log" 2>&1
    grep -E "CER|done|Error|samples/s" "$OUT/learning13.log" | tail -14
    rm -f "$OUT/learning13"/predictions* 2>/dev/null
    ;;
  *) echo "usage: $0 a|b|c" >&2; exit 2 ;;
esac
