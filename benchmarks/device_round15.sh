#!/usr/bin/env bash
# Device run prepared in the thirteenth session for the next one, one call each (carry .whl/;
# `gpu` also .shared/). Suggested order: gpu+phases in one call, then compile, then learn.
#   bash benchmarks/device_round15.sh gpu     # the GPU tests (training, grouped experts, engine) at this code
#   bash benchmarks/device_round15.sh phases  # `paper` on "page", bf16 / fp32 / master weights, each step split
#                                             # into the host's launch time per phase and the GPU's tail
#                                             # (bench_train --phases): is the fp32 step the host's?
#   bash benchmarks/device_round15.sh compile # fp32 and masters with CLIP's and the decoder's layers compiled,
#                                             # against uncompiled, the same phases recorded
#   bash benchmarks/device_round15.sh learn   # the learning run with its new defaults (CLIP at 0.3x through
#                                             # the library's vision_lr_scale groups), 7 minutes: the
#                                             # twelfth round's 0.070 again?
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint, gpu_tests
case "${1:-}" in
  gpu)
    gpu_tests "$OUT/gpu_tests.log" 300 tests/test_training_gpu.py tests/test_grouped_experts.py tests/test_engine_gpu.py \
      tests/test_training_optim.py
    ;;
  phases)
    full_checkpoint
    timeout 240 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights all --steps 6 --warmup 2 \
      --no-check --phases --checkpoint /tmp/full --json "$OUT/train_paper_phases.json" > /tmp/phases.log 2>&1
    echo "rc=$?"; grep -E '^\| page|phases|rror' /tmp/phases.log
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
    timeout 560 "$PY" benchmarks/learning_run.py --minutes 7 --preset paper --workers 12 --eval-every 750 \
      --out "$OUT/learning15" > "$OUT/learning15.log" 2>&1
    echo "rc=$?"; grep -E "CER|done|Error" "$OUT/learning15.log" | tail -8
    rm -f "$OUT/learning15"/predictions* 2>/dev/null
    ;;
  *) echo "usage: $0 gpu|phases|compile|learn" >&2; exit 2 ;;
esac
