#!/usr/bin/env bash
# Seventh-session device runs, one device call each, carrying .whl/ (and .shared/ for `a`):
#   bash benchmarks/device_round7.sh a           # the GPU tests (kernels, engine, grouped experts) after the
#                                                # engine-staleness fix, then learning_run preset paper 6 minutes
#   bash benchmarks/device_round7.sh learn NAME MINUTES ARGS...  # one learning run alone, batch 64
#   bash benchmarks/device_round7.sh train       # bench_train page x paper, then lines x lora
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
learn() {  # name, minutes, then learning_run arguments; the log, log.json and plot come back
  name=$1; minutes=$2; shift 2
  timeout 590 "$PY" benchmarks/learning_run.py --minutes "$minutes" --workers 12 --batch 64 --eval-every 500 \
    --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  grep -E "CER|done|Error|samples/s" "$OUT/$name.log" | tail -14
  rm -f "$OUT/$name"/predictions* 2>/dev/null
}
case "${1:-}" in
  a)
    "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
    DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
      timeout 150 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/kernels tests/test_engine_gpu.py \
      tests/test_grouped_experts.py > "$OUT/gpu_tests.log" 2>&1; tail -6 "$OUT/gpu_tests.log"
    learn learning7_paper 5.5 --preset paper --lr 3e-4
    ;;
  learn) shift; learn "$@" ;;
  train)
    timeout 300 "$PY" benchmarks/bench_train.py --workload page --mode paper --steps 8 --json "$OUT/train_page_paper.json" \
      > "$OUT/train_page_paper.log" 2>&1; grep -E "tokens/s|s/step|Error" "$OUT/train_page_paper.log" | tail -4
    timeout 250 "$PY" benchmarks/bench_train.py --workload lines --mode lora --steps 8 --json "$OUT/train_lines_lora.json" \
      > "$OUT/train_lines_lora.log" 2>&1; grep -E "tokens/s|s/step|Error" "$OUT/train_lines_lora.log" | tail -4
    ;;
  *) echo "usage: $0 a|learn NAME MINUTES ARGS...|train" >&2; exit 2 ;;
esac
