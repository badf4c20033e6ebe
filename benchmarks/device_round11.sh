#!/usr/bin/env bash
# Device runs of the tenth session, on one held machine, back to back (carry .whl/; `ab` also
# .shared/ and .ab/, which holds the training objective as it was before it stopped waiting for
# the GPU: `git show 9f72964:deepseek_ocr/training/objective.py > .ab/objective_before.py`):
#   bash benchmarks/device_round11.sh ab     # the GPU training tests; `paper` on "page" with the objective
#                                            # before and after, interleaved; the trainer on CUDA
#   bash benchmarks/device_round11.sh learn  # the learning run, 8 training minutes in one call
#   bash benchmarks/device_round11.sh e      # the HTTP layer's cost: pipeline and server alternating,
#                                            # both at the server's 16384 prompt tokens per step
#   bash benchmarks/device_round11.sh final  # (.whl/, .shared/) the GPU training test again (image rows
#                                            # placed by index), then the learning run for 7.5 minutes
#                                            # with its views made as uint8 levels in the workers
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt, full_checkpoint, gpu_tests
case "${1:-}" in
  ab)
    gpu_tests "$OUT/gpu_tests.log" 120 tests/test_training_gpu.py tests/test_grouped_experts.py
    full_checkpoint
    cp deepseek_ocr/training/objective.py /tmp/objective_after.py
    B=(--workload page --mode paper --steps 6 --warmup 2 --no-check --checkpoint /tmp/full)
    for run in after_fp32 before_fp32 after_bf16 before_bf16 after_fp32b before_fp32b; do
      case $run in before*) cp .ab/objective_before.py deepseek_ocr/training/objective.py ;;
                   *) cp /tmp/objective_after.py deepseek_ocr/training/objective.py ;; esac
      w=fp32; case $run in *bf16*) w=bf16 ;; esac
      timeout 75 "$PY" benchmarks/bench_train.py "${B[@]}" --weights $w --json "/tmp/ab_$run.json" > "/tmp/ab_$run.log" 2>&1
      echo "$run: $(grep -E '^\| page' "/tmp/ab_$run.log" | tail -1)"
    done
    cp /tmp/objective_after.py deepseek_ocr/training/objective.py
    "$PY" - <<'PY' > "$OUT/train_ab.json"
import glob, json
print(json.dumps({p.split("/")[-1][3:-5]: json.load(open(p)) for p in sorted(glob.glob("/tmp/ab_*.json"))}, indent=1))
PY
    # the trainer on CUDA with the step's single wait: paper with evaluations and checkpoints
    "$PY" benchmarks/make_train_pages.py --model /tmp/small --pages /tmp/pages
    T=(--model /tmp/small --data /tmp/pages/train --eval-data /tmp/pages/held --mode tiny --batch-size 4
       --checkpoint-every 3 --quiet --json)
    { timeout 120 "$PY" -m deepseek_ocr train "${T[@]}" --preset paper --max-steps 6 --lr 1e-4 --eval-every 3 --out /tmp/run
      echo "paper rc=$?"; ls /tmp/run/checkpoints; } > "$OUT/train_cli.log" 2>&1
    grep -E "rc=" "$OUT/train_cli.log"; tail -c 400 "$OUT/train_cli.log"
    ;;
  learn)  # the seventh session's best configuration (CER 0.243), now with the step overlap
    timeout 585 "$PY" benchmarks/learning_run.py --minutes 8 --preset paper --lr 3e-4 --batch 64 --workers 12 \
      --eval-every 750 --out "$OUT/learning11" > "$OUT/learning11.log" 2>&1
    grep -E "CER|done|Error|samples/s" "$OUT/learning11.log" | tail -12
    ;;
  e)
    full_checkpoint
    S=(--model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000)
    for i in 1 2; do
      timeout 110 "$PY" benchmarks/bench_pages.py --folder /tmp/full --pages 256 --tokens 1000 --batch-size 256 \
        --workers 12 --warm --variants default --prefill-tokens 16384 --out "$OUT/bench_pages_$i.json" > "/tmp/pages_$i.log" 2>&1
      echo "pipeline $i"; grep -E '"pages_per_s"' "/tmp/pages_$i.log" | head -2
      timeout 80 "$PY" benchmarks/bench_server.py "${S[@]}" --out "$OUT/bench_server_$i.json" > "/tmp/server_$i.log" 2>&1
      echo "server $i"; grep -E "pages/s|preparing" "/tmp/server_$i.log"
    done
    ;;
  final)
    gpu_tests "$OUT/gpu_tests_final.log" 90 tests/test_training_gpu.py
    timeout 500 "$PY" benchmarks/learning_run.py --minutes 7.5 --preset paper --lr 3e-4 --batch 64 --workers 12 \
      --eval-every 750 --out "$OUT/learning11b" > "$OUT/learning11b.log" 2>&1
    grep -E "CER|done|Error|samples/s" "$OUT/learning11b.log" | tail -14
    ;;
  *) echo "usage: $0 ab|learn|e|final" >&2; exit 2 ;;
esac
