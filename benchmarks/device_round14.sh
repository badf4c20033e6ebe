#!/usr/bin/env bash
# Device run prepared in the twelfth session for the next one (carry .whl/), one call:
#   bash benchmarks/device_round14.sh sweep  # the server's full table at the current code: concurrency 1, 16,
#                                            # 64 and 256 (issue 11's levels; 16 was never measured), and
#                                            # the engine's own first token from the same PNG bytes beside it
#   bash benchmarks/device_round14.sh profile # `paper` on "page" with bf16, fp32 and master weights under torch.profiler
#                                            # (kernel time against the unprofiled step: is the step the GPU's or the host's?)
#   bash benchmarks/device_round14.sh compile # `paper` on "page", fp32 and masters, with CLIP's and the decoder's layers
#                                            # under torch.compile (bench_train --compile all), against the same
#                                            # rows uncompiled in the same call
#   bash benchmarks/device_round14.sh learn  # the learning run (8 minutes, the best configuration) with CLIP
#                                            # at 0.3x the rate (--tower-lr-scale 0.3: 9e-5 against 3e-4 for the
#                                            # projector and decoder); the log now holds the tower's gradient norm
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint
case "${1:-}" in
  sweep)
    full_checkpoint
    timeout 120 "$PY" benchmarks/bench_engine.py --folder /tmp/full --pages 16 --skip encode,decode_b1,queue,queue_static,variable,memory \
      --out "$OUT/bench_engine_ttft.json" > /tmp/engine_ttft.log 2>&1
    echo "engine rc=$?"; grep -v "^ " /tmp/engine_ttft.log | tail -4
    timeout 300 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 1 16 64 256 --requests 8 48 128 256 \
      --max-tokens 1000 --out "$OUT/bench_server_sweep.json" > /tmp/sweep.log 2>&1
    echo "server rc=$?"; grep -E "concurrency|preparing" /tmp/sweep.log
    ;;
  profile)
    full_checkpoint
    timeout 240 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights all --steps 4 --warmup 2 \
      --no-check --checkpoint /tmp/full --json "$OUT/train_paper_profiled.json" --profile "$OUT/train_profile_paper.txt" \
      > /tmp/profile.log 2>&1
    echo "rc=$?"; grep -E '^\| page|^==|Error' /tmp/profile.log "$OUT/train_profile_paper.txt"
    ;;
  compile)
    full_checkpoint
    B=(--workload page --mode paper --steps 6 --warmup 3 --no-check --checkpoint /tmp/full)
    for run in fp32: fp32:all master: master:all; do
      w=${run%%:*}; c=${run#*:}; name=${w}_${c:-plain}
      timeout 140 "$PY" benchmarks/bench_train.py "${B[@]}" --weights "$w" ${c:+--compile "$c"} \
        --json "$OUT/train_paper_$name.json" > "/tmp/$name.log" 2>&1
      echo "$name rc=$?: $(grep -E '^\| page|rror' "/tmp/$name.log" | tail -1)"
    done
    ;;
  learn)
    timeout 585 "$PY" benchmarks/learning_run.py --minutes 8 --preset paper --lr 3e-4 --tower-lr-scale 0.3 --batch 64 \
      --workers 12 --eval-every 750 --out "$OUT/learning14" > "$OUT/learning14.log" 2>&1
    grep -E "CER|done|Error|samples/s" "$OUT/learning14.log" | tail -14
    rm -f "$OUT/learning14"/predictions* 2>/dev/null
    ;;
  *) echo "usage: $0 sweep|profile|compile|learn" >&2; exit 2 ;;
esac
