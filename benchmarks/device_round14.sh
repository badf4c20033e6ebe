#!/usr/bin/env bash
# Device run prepared in the twelfth session for the next one (carry .whl/), one call:
#   bash benchmarks/device_round14.sh sweep  # the server's full table at the current code: concurrency 1, 16,
#                                            # 64 and 256 (issue 11's levels; 16 was never measured), and
#                                            # the engine's own first token from the same PNG bytes beside it
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
  *) echo "usage: $0 sweep" >&2; exit 2 ;;
esac
