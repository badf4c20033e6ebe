#!/usr/bin/env bash
# Device runs prepared in the tenth session for the next one (RESULTS.md, "Ninth round", next calls);
# carry .whl/ (and .shared/ for `gpu`). Each call returns at most 8 files.
#   bash benchmarks/device_round12.sh gpu     # the GPU tests of training and the engine at this code
#   bash benchmarks/device_round12.sh paper   # `paper` on "page": bf16, fp32, float32 masters, twice interleaved
#   bash benchmarks/device_round12.sh spread  # the learning run's spread: 4-minute runs at lr 2e-4 and 3e-4,
#                                             # warmup 300, each twice (~20 min over two calls: `spread 1`, `spread 2`)
#   bash benchmarks/device_round12.sh prep    # the server at a burst of 256 with 4, 8 and 12 preparing threads
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
  spread)  # `spread 1`: lr 3e-4 twice; `spread 2`: lr 2e-4 twice (same seed: same init and images)
    lr=3e-4; [ "${2:-1}" = 2 ] && lr=2e-4
    for run in a b; do
      timeout 290 "$PY" benchmarks/learning_run.py --minutes 4 --preset paper --lr $lr --warmup 300 --batch 64 \
        --workers 12 --eval-every 700 --out "$OUT/spread_${lr}_$run" > "$OUT/spread_${lr}_$run.log" 2>&1
      echo "lr $lr run $run: $(grep -E 'done' "$OUT/spread_${lr}_$run.log")"
    done
    ;;
  prep)
    full_checkpoint
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    for run in 4a:4 8:8 12:12 4b:4; do
      n=${run#*:}; name=${run%%:*}
      timeout 80 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=--prepare-workers --serve-arg=$n \
        --out "$OUT/bench_server_prep$name.json" > "/tmp/prep$name.log" 2>&1
      echo "threads $n ($name)"; grep -E "pages/s|preparing" "/tmp/prep$name.log"
    done
    ;;
  *) echo "usage: $0 gpu|paper|spread [1|2]|prep" >&2; exit 2 ;;
esac
