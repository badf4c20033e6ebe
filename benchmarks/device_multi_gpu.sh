#!/usr/bin/env bash
# The multi-GPU issue's runs, on nvidia-h200-x2 (or more GPUs), one call each, carrying .whl/:
#   bash benchmarks/device_multi_gpu.sh pages   # the batch command on GPU 0, then under torchrun on all
#   bash benchmarks/device_multi_gpu.sh train   # DDP LoRA and FSDP2 `paper` against one GPU, 50 steps at the
#                                               # same global batch; a 2-rank LoRA checkpoint resumed on 1
#   bash benchmarks/device_multi_gpu.sh server  # the server at concurrency 256: --gpus 0, then every GPU
# Written in the ninth session, not run yet (no machine with several GPUs lent so far).
set -u
# NVLink multicast stays off (the device notes: it can take the host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
. benchmarks/device_env.sh  # $PY, the carried wheels, $OUT, device.txt
N=$(nvidia-smi -L | wc -l)
RUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$N")
prepare() {
  [ -f /tmp/full/config.json ] || "$PY" -c "from deepseek_ocr import make_random_checkpoint; make_random_checkpoint('/tmp/full', layers=12, experts=64, topk=6)"
  [ -d /tmp/mg/train ] || "$PY" benchmarks/make_multi_gpu_data.py --out /tmp/mg --pages 256 --train 32 --tokenizer /tmp/full
}
case "${1:-}" in
  pages)  # 256 Gundam pages, 1,000 tokens each (--ignore-eos): every page once, outputs merged once
    prepare
    C=(/tmp/mg/pages --model /tmp/full --mode gundam --max-new-tokens 1000 --ignore-eos --batch-size 256
       --workers 12 --quiet --json)
    CUDA_VISIBLE_DEVICES=0 timeout 280 "$PY" -m deepseek_ocr "${C[@]}" --out /tmp/o1 > /dev/null 2> /tmp/o1.err
    echo "1 GPU rc=$?"
    timeout 280 "${RUN[@]}" -m deepseek_ocr "${C[@]}" --out /tmp/oN > /dev/null 2> /tmp/oN.err
    echo "$N GPUs rc=$?"; tail -3 /tmp/oN.err
    cp /tmp/o1/summary.json "$OUT/pages_1gpu_summary.json"; cp /tmp/oN/summary.json "$OUT/pages_${N}gpu_summary.json"
    "$PY" - "$N" <<'PY'
import json, sys
from pathlib import Path
n = sys.argv[1]
one, many = (json.loads(Path(f"/tmp/{d}/summary.json").read_text()) for d in ("o1", "oN"))
pages = sorted(Path("/tmp/oN").glob("*/page-*.json"))
pages = [p for p in pages if not p.name.endswith(".error.json")]
docs = [d for d in Path("/tmp/oN").iterdir() if d.is_dir()]
once = all(len(list(d.glob(f"{d.name}.md"))) == 1 for d in docs)
print(f"pages/s: 1 GPU {one['totals'].get('pages_per_s')}, {n} GPUs {many['totals'].get('pages_per_s')} "
      f"(x{many['totals']['pages_per_s'] / one['totals']['pages_per_s']:.2f}); "
      f"{len(pages)} page records, totals {many['totals']['pages']} pages, {many['totals']['ok']} ok; "
      f"{len(docs)} documents, each markdown once: {once}")
PY
    ;;
  train)  # the fine-tuning issue's "page" workload (Gundam 2x3 tiles, 1,000 answer tokens)
    prepare
    T=(train --model /tmp/full --data /tmp/mg/train --mode gundam --max-steps 50 --log-every 1 --warmup-steps 5
       --lr 1e-4 --checkpoint-every 0 --no-save-model --no-tensorboard --quiet)
    lora=(--lora-r 16 --lora-alpha 16)
    CUDA_VISIBLE_DEVICES=0 timeout 150 "$PY" -m deepseek_ocr "${T[@]}" "${lora[@]}" --batch-size 2 --grad-accum "$N" \
      --out /tmp/t_lora_1 > /dev/null 2> /tmp/t_lora_1.err; echo "lora 1 GPU rc=$?"
    timeout 150 "${RUN[@]}" -m deepseek_ocr "${T[@]}" "${lora[@]}" --batch-size 2 --out /tmp/t_lora_N \
      > /dev/null 2> /tmp/t_lora_N.err; echo "lora $N GPUs (DDP) rc=$?"
    CUDA_VISIBLE_DEVICES=0 timeout 200 "$PY" -m deepseek_ocr "${T[@]}" --preset paper --batch-size 2 --grad-accum "$N" \
      --out /tmp/t_paper_1 > /dev/null 2> /tmp/t_paper_1.err; echo "paper 1 GPU rc=$?"
    timeout 200 "${RUN[@]}" -m deepseek_ocr "${T[@]}" --preset paper --strategy fsdp --batch-size 2 --out /tmp/t_paper_N \
      > /dev/null 2> /tmp/t_paper_N.err; echo "paper $N GPUs (FSDP2) rc=$?"; tail -3 /tmp/t_paper_N.err
    for r in lora_1 lora_N paper_1 paper_N; do cp "/tmp/t_$r/log.jsonl" "$OUT/train_${r}_log.jsonl" 2>/dev/null; done
    "$PY" - "$N" <<'PY'
import json, statistics, sys
from pathlib import Path
n = sys.argv[1]
def read(name):
    rows = [json.loads(l) for l in Path(f"/tmp/t_{name}/log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "loss" in r}
    speed = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > 10]
    return steps, statistics.median(speed) if speed else float("nan")
for kind in ("lora", "paper"):
    (a, sa), (b, sb) = read(f"{kind}_1"), read(f"{kind}_N")
    common = sorted(set(a) & set(b))
    rel = max(abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in common)
    print(f"{kind}: {len(common)} common steps, max relative loss difference {rel:.4f} "
          f"(step 1 {a[1]['loss']:.4f} vs {b[1]['loss']:.4f}, step {common[-1]} {a[common[-1]]['loss']:.4f} vs "
          f"{b[common[-1]]['loss']:.4f}); tokens/s 1 GPU {sa:.0f}, {n} GPUs {sb:.0f} (x{sb / sa:.2f})")
PY
    # a checkpoint written by N ranks, resumed in one process
    R=(train --model /tmp/full --data /tmp/mg/train --mode gundam --log-every 1 --warmup-steps 5 --lr 1e-4
       --lora-r 16 --batch-size 2 --checkpoint-every 10 --no-save-model --no-tensorboard --quiet --out /tmp/t_resume)
    timeout 100 "${RUN[@]}" -m deepseek_ocr "${R[@]}" --max-steps 10 > /dev/null 2> /tmp/t_resume_a.err
    echo "resume: $N ranks to step 10 rc=$?"
    CUDA_VISIBLE_DEVICES=0 timeout 100 "$PY" -m deepseek_ocr "${R[@]}" --max-steps 20 --resume auto > /dev/null 2> /tmp/t_resume_b.err
    echo "resume: 1 process from step 10 to 20 rc=$?"; tail -2 /tmp/t_resume_b.err
    cp /tmp/t_resume/log.jsonl "$OUT/train_resume_log.jsonl" 2>/dev/null
    ;;
  server)  # one engine per GPU behind one endpoint
    prepare
    S=(--model /tmp/full --concurrency 256 --requests 512 --max-tokens 1000)
    timeout 150 "$PY" benchmarks/bench_server.py "${S[@]}" --serve-arg=--gpus --serve-arg=0 --out "$OUT/server_1gpu.json" \
      > /tmp/s1.log 2>&1; grep -E "pages/s" /tmp/s1.log
    timeout 150 "$PY" benchmarks/bench_server.py "${S[@]}" --out "$OUT/server_${N}gpu.json" > /tmp/sN.log 2>&1
    grep -E "pages/s" /tmp/sN.log
    ;;
  *) echo "usage: $0 pages|train|server" >&2; exit 2 ;;
esac
