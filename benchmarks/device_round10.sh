#!/usr/bin/env bash
# Device runs of the ninth session: three calls on one held machine, back to back (carry .whl/,
# and .shared/ for `a`), each returning at most 8 files:
#   bash benchmarks/device_round10.sh a   # learning run, first 5 training minutes; the engine's GPU tests
#   bash benchmarks/device_round10.sh b   # learning run, resumed to 10 minutes; `deepseek-ocr train` on CUDA
#   bash benchmarks/device_round10.sh c   # `paper` with master weights; the server A/Bs at concurrency 256
#   bash benchmarks/device_round10.sh d   # the server's admission budget, interleaved (8k, 16k, 32k, 16k, 8k)
#   bash benchmarks/device_round10.sh e   # the HTTP layer's cost: the in-process pipeline and the server, one machine
# The learning run: `paper`, lr 3e-4, batch 64, the cosine over 8 of the 10 minutes (the last 2 at
# 10% of the rate). Run in the ninth session with master weights (then learning_run's default on
# CUDA; CER 0.445): they are off by default since, so `a`/`b` now run autocast's casts, the
# seventh session's configuration. (The fallback below only matters with --master-weights.)
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
LEARN=(--minutes 10 --decay-minutes 8 --preset paper --lr 3e-4 --batch 64 --workers 12 --eval-every 750
       --state .learning_state --out "$OUT/learning10")
case "${1:-}" in
  a)
    rm -rf .learning_state
    timeout 430 "$PY" benchmarks/learning_run.py "${LEARN[@]}" --stop-after 5 > "$OUT/learning10_a.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] && [ ! -d .learning_state ]; then
      echo "learn a failed (rc=$rc) with master weights; again without"; tail -5 "$OUT/learning10_a.log"
      mv "$OUT/learning10_a.log" "$OUT/learning10_a_masters_failed.log"
      timeout 430 "$PY" benchmarks/learning_run.py "${LEARN[@]}" --stop-after 5 --no-master-weights \
        > "$OUT/learning10_a.log" 2>&1
    fi
    grep -E "CER|done|Error|state|samples/s" "$OUT/learning10_a.log" | tail -6
    if [ -d .shared ]; then
      "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
      DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
        timeout 140 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/test_engine_gpu.py tests/test_grouped_experts.py \
        > "$OUT/gpu_tests.log" 2>&1
      tail -3 "$OUT/gpu_tests.log"
    fi
    ;;
  b)
    timeout 440 "$PY" benchmarks/learning_run.py "${LEARN[@]}" --resume > "$OUT/learning10_b.log" 2>&1
    grep -E "CER|done|Error|resumed" "$OUT/learning10_b.log" | tail -8
    # the trainer on CUDA, end to end: `paper` (evaluations, checkpoints, the exported model; run
    # in the ninth session with master weights, the default then), then LoRA with its base in
    # bf16, resumed once
    "$PY" benchmarks/make_train_pages.py --model /tmp/small --pages /tmp/pages
    T=(--model /tmp/small --data /tmp/pages/train --eval-data /tmp/pages/held --mode tiny --batch-size 4
       --checkpoint-every 3 --quiet --json)
    { timeout 150 "$PY" -m deepseek_ocr train "${T[@]}" --preset paper --max-steps 6 --lr 1e-4 --eval-every 3 --out /tmp/run
      echo "paper rc=$?"; ls /tmp/run /tmp/run/checkpoints /tmp/run/model
      timeout 100 "$PY" -m deepseek_ocr train "${T[@]}" --lora-r 8 --max-steps 3 --out /tmp/lora
      timeout 100 "$PY" -m deepseek_ocr train "${T[@]}" --lora-r 8 --max-steps 6 --out /tmp/lora --resume auto
      echo "lora rc=$?"; } > "$OUT/train_cli.log" 2>&1
    grep -E "rc=" "$OUT/train_cli.log"; tail -c 600 "$OUT/train_cli.log"
    ;;
  c)
    full_checkpoint
    timeout 150 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights all --steps 5 --warmup 2 \
      --no-check --checkpoint /tmp/full --json "$OUT/train_masters.json" > /tmp/train_masters.log 2>&1
    tail -6 /tmp/train_masters.log
    "$PY" benchmarks/bench_prepare.py 2>&1 | tail -4
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    timeout 110 "$PY" benchmarks/bench_server.py "${S[@]}" --out "$OUT/bench_server_split.json" > /tmp/s1.log 2>&1
    tail -3 /tmp/s1.log
    timeout 110 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=--prefill-tokens --serve-arg=16384 \
      --out "$OUT/bench_server_prefill16k.json" > /tmp/s2.log 2>&1
    tail -3 /tmp/s2.log
    timeout 110 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=--admit-gather-steps --serve-arg=16 \
      --out "$OUT/bench_server_gather16.json" > /tmp/s3.log 2>&1
    tail -3 /tmp/s3.log
    ;;
  d)  # the admission budget, interleaved on one machine: 8192 (default), 16384, 32768 prompt tokens per step
    full_checkpoint
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    for run in base1:8192 p16a:16384 p32:32768 p16b:16384 base2:8192; do
      timeout 75 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=--prefill-tokens --serve-arg="${run#*:}" \
        --out "$OUT/bench_server_${run%%:*}.json" > "/tmp/${run%%:*}.log" 2>&1
      echo "${run}"; grep -E "pages/s|preparing" "/tmp/${run%%:*}.log"
    done
    ;;
  e)  # the same 256 pages in process (the command's pipeline, graphs captured first) and through
      # the server (its GPU default, 16384 prompt tokens per step), twice each, alternating
    full_checkpoint
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    for i in 1 2; do
      timeout 110 "$PY" benchmarks/bench_pages.py --folder /tmp/full --pages 256 --tokens 1000 --batch-size 256 \
        --workers 12 --warm --out "$OUT/bench_pages_$i.json" > "/tmp/pages_$i.log" 2>&1
      echo "pipeline $i"; tail -3 "/tmp/pages_$i.log"
      timeout 80 "$PY" benchmarks/bench_server.py "${S[@]}" --out "$OUT/bench_server_$i.json" > "/tmp/server_$i.log" 2>&1
      echo "server $i"; grep -E "pages/s|preparing" "/tmp/server_$i.log"
    done
    ;;
  *) echo "usage: $0 a|b|c|d|e" >&2; exit 2 ;;
esac
