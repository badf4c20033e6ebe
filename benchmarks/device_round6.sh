#!/usr/bin/env bash
# Next device runs (written in the sixth session, after the evaluation fix and the view packing;
# not run yet). One device call each, carrying .whl/:
#   bash benchmarks/device_round6.sh paper    # learning_run alone, preset paper, batch 64, lr 3e-4, 8 training minutes
#   bash benchmarks/device_round6.sh frozen   # the same with the tower frozen, lr 1e-3
#   bash benchmarks/device_round6.sh train    # bench_train page x paper (the 20,000 tokens/s target), then lines x lora
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
learn() {  # name, then learning_run arguments; the log, log.json and plot come back
  name=$1; shift
  timeout 570 "$PY" benchmarks/learning_run.py --minutes 8 --workers 12 --batch 64 --eval-every 600 \
    --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  grep -E "CER|done|Error" "$OUT/$name.log" | tail -14
  rm -f "$OUT/$name"/predictions* 2>/dev/null
}
case "${1:-}" in
  paper) learn learning6_paper --preset paper --lr 3e-4 ;;
  frozen) learn learning6_frozen --preset tower-frozen --lr 1e-3 ;;
  train)
    timeout 300 "$PY" benchmarks/bench_train.py --workload page --mode paper --steps 8 --json "$OUT/train_page_paper.json" \
      > "$OUT/train_page_paper.log" 2>&1; grep -E "tokens/s|s/step|Error" "$OUT/train_page_paper.log" | tail -4
    timeout 250 "$PY" benchmarks/bench_train.py --workload lines --mode lora --steps 8 --json "$OUT/train_lines_lora.json" \
      > "$OUT/train_lines_lora.log" 2>&1; grep -E "tokens/s|s/step|Error" "$OUT/train_lines_lora.log" | tail -4
    ;;
  *) echo "usage: $0 paper|frozen|train" >&2; exit 2 ;;
esac
