#!/usr/bin/env bash
# Device runs prepared in the fourteenth session for the next one, one call each (carry .whl/):
#   bash benchmarks/device_round16.sh trainer  # `deepseek-ocr train --preset paper` itself on the "page"
#                                              # workload (32 Gundam pages, ~1,000-token targets, batch 2),
#                                              # uncompiled and with --compile all --compile-mode
#                                              # reduce-overhead, alternating twice: tokens/s from the log
#                                              # (median over steps 21-60: the lengths' graphs recorded by
#                                              # then), the trainer's own step against bench_train's
#   bash benchmarks/device_round16.sh learn    # device_round15.sh learn (7 minutes, seed 1)
#   bash benchmarks/device_round16.sh gpu      # (carry .shared/ too) the training GPU tests: the compiled-
#                                              # trainer test was made stricter after its last GPU run
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint
case "${1:-}" in
  trainer)
    full_checkpoint
    [ -d /tmp/mg/train ] || "$PY" benchmarks/make_multi_gpu_data.py --out /tmp/mg --pages 0 --train 32 --tokenizer /tmp/full
    T=(train --model /tmp/full --data /tmp/mg/train --mode gundam --preset paper --batch-size 2 --max-steps 60
       --log-every 1 --warmup-steps 5 --lr 1e-5 --checkpoint-every 0 --no-save-model --no-tensorboard --quiet)
    for run in plain:1 graphs:1 plain:2 graphs:2; do
      kind=${run%%:*}; extra=()
      [ "$kind" = graphs ] && extra=(--compile all --compile-mode reduce-overhead)
      timeout 140 "$PY" -m deepseek_ocr "${T[@]}" "${extra[@]}" --out "/tmp/t_$run" > /dev/null 2> "/tmp/t_$run.err"
      echo "$run rc=$?"; tail -2 "/tmp/t_$run.err"
      cp "/tmp/t_$run/log.jsonl" "$OUT/trainer_paper_${kind}_${run##*:}_log.jsonl" 2>/dev/null
    done
    "$PY" - "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
for log in sorted(Path(sys.argv[1]).glob("trainer_paper_*_log.jsonl")):
    rows = [json.loads(l) for l in log.read_text().splitlines()]
    rate = [r["tokens_per_s"] for r in rows if r.get("step", 0) > 20 and "tokens_per_s" in r]
    first = [r["tokens_per_s"] for r in rows if 0 < r.get("step", 0) <= 20 and "tokens_per_s" in r]
    if rate:
        print(f"{log.name}: steps 21-60 median {statistics.median(rate):,.0f} tokens/s "
              f"(min {min(rate):,.0f}, max {max(rate):,.0f}); steps 1-20 median {statistics.median(first):,.0f}")
PY
    ;;
  learn) bash benchmarks/device_round15.sh learn ;;
  gpu) gpu_tests "$OUT/gpu_tests.log" 400 tests/test_training_gpu.py tests/test_training_optim.py --durations=5 ;;
  *) echo "usage: $0 trainer|learn|gpu" >&2; exit 2 ;;
esac
