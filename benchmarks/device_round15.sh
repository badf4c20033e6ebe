#!/usr/bin/env bash
# Device run prepared in the thirteenth session for the next one, one call each (carry .whl/;
# `gpu` also .shared/). Suggested order: gpu+phases in one call, then compile, then learn.
#   bash benchmarks/device_round15.sh gpu     # the GPU tests (training, grouped experts, engine) at this code
#   bash benchmarks/device_round15.sh phases  # `paper` on "page", fp32 / bf16 / master / fp32 weights, one
#                                             # process each, each step split into the host's launch time
#                                             # per phase and the GPU's tail (bench_train --phases): is the
#                                             # fp32 step the host's, and is it the format or the order?
#   bash benchmarks/device_round15.sh compile # fp32 and masters with CLIP's and the decoder's layers compiled,
#                                             # against uncompiled, the same phases recorded
#   bash benchmarks/device_round15.sh learn   # the learning run with its new defaults (CLIP at 0.3x through
#                                             # the library's vision_lr_scale groups), 7 minutes, seed 1
#                                             # (another init, sample stream and held-out set than the
#                                             # twelfth round's two runs): 0.070 again?
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint, gpu_tests
case "${1:-}" in
  gpu)
    gpu_tests "$OUT/gpu_tests.log" 300 tests/test_training_gpu.py tests/test_grouped_experts.py tests/test_engine_gpu.py \
      tests/test_training_optim.py
    ;;
  phases)
    # One process per format, fp32 first and last: within one process the rows always ran bf16,
    # fp32, master, and across rounds fp32 and masters measured 0.21-0.28 s while bf16 measured
    # 0.16-0.21; the profile's host ops were ~1.5x slower per call in the fp32 row than in the
    # bf16 row with about the same number of launches. Is it the format or the order?
    full_checkpoint
    i=0
    for w in fp32 bf16 master fp32; do
      i=$((i + 1)); name=${i}_$w
      timeout 120 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights "$w" --steps 6 --warmup 2 \
        --no-check --phases --checkpoint /tmp/full --json "$OUT/train_paper_phases_$name.json" > "/tmp/phases_$name.log" 2>&1
      echo "$name rc=$?: $(grep -E '^\| page|rror' "/tmp/phases_$name.log" | tail -1) $(grep phases "/tmp/phases_$name.log")"
    done
    ;;
  compile)
    full_checkpoint
    B=(--workload page --mode paper --steps 6 --warmup 3 --no-check --phases --checkpoint /tmp/full)
    for run in fp32: fp32:all master: master:all; do
      w=${run%%:*}; c=${run#*:}; name=${w}_${c:-plain}
      timeout 140 "$PY" benchmarks/bench_train.py "${B[@]}" --weights "$w" ${c:+--compile "$c"} \
        --json "$OUT/train_paper_$name.json" > "/tmp/$name.log" 2>&1
      echo "$name rc=$?: $(grep -E '^\| page|rror' "/tmp/$name.log" | tail -1) $(grep phases "/tmp/$name.log")"
    done
    ;;
  learn)
    timeout 560 "$PY" benchmarks/learning_run.py --minutes 7 --preset paper --seed 1 --workers 12 --eval-every 750 \
      --out "$OUT/learning15" > "$OUT/learning15.log" 2>&1
    echo "rc=$?"; grep -E "CER|done|Error" "$OUT/learning15.log" | tail -8
    rm -f "$OUT/learning15"/predictions* 2>/dev/null
    ;;
  *) echo "usage: $0 gpu|phases|compile|learn" >&2; exit 2 ;;
esac
