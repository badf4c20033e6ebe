#!/usr/bin/env bash
# Device runs of the eighth session (one call, carrying .whl/):
#   bash benchmarks/device_round9.sh masters
#   bash benchmarks/device_round9.sh server   # after `masters` on the same machine (/tmp/full);
#                                             # carry .shared/ too (GPU tests of the engine first)
#   bash benchmarks/device_round9.sh learn10a # then learn10b in the next call: the 10-minute learning
#   bash benchmarks/device_round9.sh learn10b # run (paper, lr 3e-4, batch 64) with master weights
# 1. `paper` on "page": float32 weights cast by autocast, bf16 weights, and float32 masters of bf16
#    copies (training/precision.py, the trainer's default now), 5 timed steps each, one process;
# 2. `deepseek-ocr train` on CUDA with master weights, end to end on a generated folder (a small
#    random checkpoint, preset paper, evaluation and the exported model), to see the trainer's
#    path (float32 block for checkpoints and evaluation) run on the GPU.
set -u
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
case "${1:-}" in
  masters)
    "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
    timeout 150 "$PY" benchmarks/bench_train.py --workload page --mode paper --weights all --steps 5 --warmup 2 \
      --no-check --checkpoint /tmp/full --json "$OUT/train_masters.json" > "$OUT/train_masters.log" 2>&1
    tail -6 "$OUT/train_masters.log"
    "$PY" benchmarks/make_train_pages.py --model /tmp/small --pages /tmp/pages
    timeout 150 "$PY" -m deepseek_ocr train --model /tmp/small --data /tmp/pages/train --eval-data /tmp/pages/held \
      --preset paper --mode tiny --max-steps 6 --batch-size 4 --lr 1e-4 --checkpoint-every 3 --eval-every 3 \
      --out /tmp/run --quiet --json > "$OUT/train_cli.json" 2> "$OUT/train_cli.err"
    echo "train rc=$?"; tail -c 1500 "$OUT/train_cli.json"; tail -5 "$OUT/train_cli.err"
    ls /tmp/run /tmp/run/checkpoints /tmp/run/model 2>&1 | head -20
    # LoRA (the base held in bf16 while training), resumed once from its checkpoint at step 3
    timeout 120 "$PY" -m deepseek_ocr train --model /tmp/small --data /tmp/pages/train --eval-data /tmp/pages/held \
      --lora-r 8 --mode tiny --max-steps 3 --batch-size 4 --checkpoint-every 3 --out /tmp/lora --quiet --json \
      > "$OUT/train_lora.json" 2> "$OUT/train_lora.err"
    timeout 120 "$PY" -m deepseek_ocr train --model /tmp/small --data /tmp/pages/train --eval-data /tmp/pages/held \
      --lora-r 8 --mode tiny --max-steps 6 --batch-size 4 --checkpoint-every 3 --out /tmp/lora --resume auto --quiet \
      --json >> "$OUT/train_lora.json" 2>> "$OUT/train_lora.err"
    echo "lora rc=$?"; tail -c 800 "$OUT/train_lora.json"; tail -3 "$OUT/train_lora.err"
    ;;
  server)  # 3. the engine's GPU tests (pinned uint8 views among them), bench_prepare on the host,
           #    and the server at concurrency 256 (views as uint8 levels) with the TTFT split into
           #    preparing and the rest
    if [ -d .shared ]; then
      "$PY" .shared/parity/make_checkpoint.py /tmp/ck --layers 3 --experts 8 --topk 6 >/dev/null
      DEEPSEEK_OCR_SHARED=$PWD/.shared DEEPSEEK_OCR_SMALL_CKPT=/tmp/ck DEEPSEEK_OCR_TEST_DEVICE=cuda CI=1 \
        timeout 150 "$PY" -m pytest -q -rs -p no:hypothesispytest tests/test_engine_gpu.py > "$OUT/gpu_tests.log" 2>&1
      tail -2 "$OUT/gpu_tests.log"
    fi
    "$PY" benchmarks/bench_prepare.py > "$OUT/bench_prepare.log" 2>&1; tail -7 "$OUT/bench_prepare.log"
    [ -d /tmp/full ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
    timeout 110 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000 \
      --out "$OUT/bench_server_split.json" > "$OUT/bench_server_split.log" 2>&1
    tail -3 "$OUT/bench_server_split.log"
    # the same with twice the admission budget per step (16-18 Gundam pages per vision encode)
    timeout 110 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000 \
      --serve-arg=--prefill-tokens --serve-arg=16384 --out "$OUT/bench_server_prefill16k.json" \
      > "$OUT/bench_server_prefill16k.log" 2>&1
    tail -3 "$OUT/bench_server_prefill16k.log"
    # arrivals gathered into groups of 8 (up to 16 steps, ~0.2 s) before their encode
    timeout 110 "$PY" benchmarks/bench_server.py --model /tmp/full --concurrency 256 --requests 256 --max-tokens 1000 \
      --serve-arg=--admit-gather-steps --serve-arg=16 --out "$OUT/bench_server_gather16.json" \
      > "$OUT/bench_server_gather16.log" 2>&1
    tail -3 "$OUT/bench_server_gather16.log"
    ;;
  learn10a|learn10b)
    # the cosine over 8 minutes (the schedule of the best run so far), its last 2 at 10% of the rate
    L=(--minutes 10 --decay-minutes 8 --preset paper --lr 3e-4 --batch 64 --workers 12 --eval-every 750
       --state .learning_state --out "$OUT/learning9_paper10")
    [ "$1" = learn10a ] && L+=(--stop-after 5) || L+=(--resume)
    timeout 590 "$PY" benchmarks/learning_run.py "${L[@]}" > "$OUT/learning9_paper10_${1#learn10}.log" 2>&1
    grep -E "CER|done|Error|state|resumed" "$OUT/learning9_paper10_${1#learn10}.log" | tail -8
    ;;
  *) echo "usage: $0 masters|server|learn10a|learn10b" >&2; exit 2 ;;
esac
