#!/usr/bin/env bash
# Next device runs (written in the seventh session; not run yet). One device call each, carrying
# .whl/; call `learn10b` right after `learn10a` (the state waits in the ignored .learning_state/ of the checkout, which a held machine keeps between calls):
#   bash benchmarks/device_round8.sh learn10a  # learning run, preset paper, lr 3e-4, a 10-minute schedule:
#                                              # the first 5 training minutes, state saved to .learning_state
#   bash benchmarks/device_round8.sh learn10b  # the same run resumed for its last 5 minutes
#   bash benchmarks/device_round8.sh server    # (carry .shared/ too) the engine's GPU tests (pinned views),
#                                              # bench_prepare on the host's CPU, then the server at concurrency
#                                              # 256 (views now pinned on the preparing threads, pixels by lookup):
#                                              # the default, then one OpenMP thread per torch call
#                                              # (OMP_NUM_THREADS=1) at 4, 8 and 12 preparing threads
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
L=(--minutes 10 --preset paper --lr 3e-4 --batch 64 --workers 12 --eval-every 750 --state .learning_state --out "$OUT/learning8_paper10")
case "${1:-}" in
  learn10a)
    timeout 590 "$PY" benchmarks/learning_run.py "${L[@]}" --stop-after 5 > "$OUT/learning8_paper10_a.log" 2>&1
    grep -E "CER|done|Error|state" "$OUT/learning8_paper10_a.log" | tail -8; du -sh .learning_state
    ;;
  learn10b)
    timeout 590 "$PY" benchmarks/learning_run.py "${L[@]}" --resume > "$OUT/learning8_paper10_b.log" 2>&1
    grep -E "CER|done|Error|resumed" "$OUT/learning8_paper10_b.log" | tail -8
    ;;
  server)
    "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
    DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
      timeout 120 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/test_engine_gpu.py > "$OUT/gpu_tests.log" 2>&1
    tail -3 "$OUT/gpu_tests.log"
    "$PY" benchmarks/bench_prepare.py > "$OUT/bench_prepare.log" 2>&1; cat "$OUT/bench_prepare.log"
    [ -d /tmp/full ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
    for v in t4 t4omp1 t8omp1 t12omp1; do
      case $v in t4) env=() ;; *) env=(OMP_NUM_THREADS=1) ;; esac
      n=${v#t}; n=${n%omp1}
      env "${env[@]}" timeout 130 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 256 --requests 256 \
        --serve-arg=--prepare-workers --serve-arg=$n --max-tokens 1000 --out "$OUT/bench_server_$v.json" > "$OUT/bench_server_$v.log" 2>&1
      echo "== $v"; grep -E "^concurrency|Error|Traceback" "$OUT/bench_server_$v.log" | tail -4
    done
    ;;
  *) echo "usage: $0 learn10a|learn10b|server" >&2; exit 2 ;;
esac
