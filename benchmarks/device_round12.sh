#!/usr/bin/env bash
# Device runs prepared in the tenth session for the next one (RESULTS.md, "Ninth round", next calls);
# carry .whl/ (and .shared/ for `gpu`). Each call returns at most 8 files.
#   bash benchmarks/device_round12.sh gpu     # the GPU tests of training and the engine at this code
#   bash benchmarks/device_round12.sh paper   # `paper` on "page": bf16, fp32, float32 masters, twice interleaved
#   bash benchmarks/device_round12.sh spread  # the learning run's spread: 4-minute runs, warmup 300, each twice
#                                             # (~10 min a call): `spread 1` lr 3e-4 with AdamW beta2 0.95 (added in
#                                             # the eleventh session), `spread 2` lr 2e-4 with beta2 0.999 (as before)
#   bash benchmarks/device_round12.sh prep    # the server at a burst of 256 with 4, 8 and 12 preparing threads, 8 processes
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint, gpu_tests
case "${1:-}" in
  gpu)
    gpu_tests "$OUT/gpu_tests.log" 200 tests/test_training_gpu.py tests/test_grouped_experts.py tests/test_engine_gpu.py
    ;;
  paper)
    full_checkpoint
    for i in 1 2; do
      timeout 150 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights all --steps 6 --warmup 2 \
        --no-check --checkpoint /tmp/full --json "$OUT/train_paper_all_$i.json" > "/tmp/paper_$i.log" 2>&1
      grep -E '^\| page' "/tmp/paper_$i.log"
    done
    ;;
  spread)  # `spread 1`: lr 3e-4, beta2 0.95, twice; `spread 2`: lr 2e-4, beta2 0.999, twice (same seed: same init and images)
    lr=3e-4 b2=0.95; [ "${2:-1}" = 2 ] && lr=2e-4 b2=0.999
    for run in a b; do
      name=spread_${lr}_b${b2}_$run
      timeout 290 "$PY" benchmarks/learning_run.py --minutes 4 --preset paper --lr $lr --beta2 $b2 --warmup 300 \
        --batch 64 --workers 12 --eval-every 700 --out "$OUT/$name" > "$OUT/$name.log" 2>&1
      echo "lr $lr beta2 $b2 run $run: $(grep -E 'done' "$OUT/$name.log")"
    done
    ;;
  prep)
    full_checkpoint
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    # 4a..4b: threads; p8: 8 preparing processes (measured slower in the fifth round, before the
    # views were made as uint8 levels: half the bytes through shared memory now).
    for run in 4a:4 8:8 12:12 p8:8 4b:4; do
      n=${run#*:}; name=${run%%:*}; how=--prepare-workers; [ "${name:0:1}" = p ] && how=--prepare-processes
      timeout 80 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=$how --serve-arg=$n \
        --out "$OUT/bench_server_prep$name.json" > "/tmp/prep$name.log" 2>&1
      echo "$how $n ($name)"; grep -E "pages/s|preparing" "/tmp/prep$name.log"
    done
    ;;
  *) echo "usage: $0 gpu|paper|spread [1|2]|prep" >&2; exit 2 ;;
esac
