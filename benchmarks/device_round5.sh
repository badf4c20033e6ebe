#!/usr/bin/env bash
# Fifth-round device runs (sixth session), each one device call:
#   bash benchmarks/device_round5.sh learn3   # three learning runs sharing the GPU (each host-bound), 6.5
#                                             # training minutes: a = defaults (paper, lr 3e-4, jitter 0),
#                                             # b = paper lr 1e-3, c = tower-frozen lr 1e-3
#   bash benchmarks/device_round5.sh learn4   # one run alone (processes sharing the GPU time-slice it,
#                                             # which learn3 showed costs each host-bound run 3x): tower-frozen,
#                                             # batch 256 (the step's host cost is per step, not per sample), lr 2e-3
# Carry .whl/ (Pillow, rapidfuzz, the server's stack, py-spy) and .shared/ where tests run.
# Only a few files come back from a call, so runs write under /tmp/r5 and are packed into one .tgz.
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
R=/tmp/r5; mkdir -p $R
phase=${1:-learn3}; shift || true
case "$phase" in
learn3)
  run() { name=$1; shift; timeout 570 "$PY" benchmarks/learning_run.py --minutes 6.5 --workers 4 --out "$R/learning_$name" "$@" \
            > "$R/learning_$name.log" 2>&1; }
  run a &
  run b --lr 1e-3 &
  run c --preset tower-frozen --lr 1e-3 &
  wait
  for r in a b c; do echo "== $r"; grep -E "CER|done|Error|samples/s" "$R/learning_$r.log" | tail -14; cp "$R/learning_$r.log" "$OUT/"; done
  tar czf "$OUT/learning_r5.tgz" -C $R .
  ;;
learn4)
  timeout 575 "$PY" benchmarks/learning_run.py --minutes 7.5 --workers 12 --out "$R/learning_d" --preset tower-frozen \
    --batch 256 --lr 2e-3 --warmup 50 --eval-every 250 "$@" > "$R/learning_d.log" 2>&1
  grep -E "CER|done|Error|samples/s" "$R/learning_d.log" | tail -30; cp "$R/learning_d.log" "$OUT/"
  tar czf "$OUT/learning_r5d.tgz" -C $R .
  ;;
final)  # the server at concurrency 256 with 8 preparing processes, then with 4 threads (the default's
        # count on 16 cores); then the learning step's throughput after the view packing (with a profile).
        # Each result is copied to $OUT when it exists (a call cut short keeps what finished).
  df -h /dev/shm | tee -a "$OUT/device.txt"  # the processes hand pages over through /dev/shm
  [ -d /tmp/full ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
  for v in p8 t4; do
    case $v in p8) extra="--serve-arg=--prepare-processes --serve-arg=8" ;; t4) extra="--serve-arg=--prepare-workers --serve-arg=4" ;; esac
    timeout 140 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 256 --requests 256 $extra \
      --max-tokens 1000 --out "$OUT/bench_server_$v.json" > "$OUT/bench_server_$v.log" 2>&1
    echo "== $v"; grep -E "^concurrency|Error|Traceback" "$OUT/bench_server_$v.log" | tail -4
  done
  timeout 120 "$PY" benchmarks/learning_run.py --max-steps 30 --workers 12 --out "$R/learning_probe" --preset tower-frozen \
    --batch 256 --eval-samples 16 --eval-every 100000 --profile "$OUT/learning_profile_b256.txt" > "$OUT/learning_probe.log" 2>&1
  tail -2 "$OUT/learning_probe.log"; "$PY" -c "import json; print('samples/s', json.load(open('$R/learning_probe/log.json'))['samples_per_s'])"
  ;;
*) echo "usage: $0 learn3|learn4|final" >&2; exit 2 ;;
esac
