"""benchmarks/spy_summary.py on a hand-written py-spy raw file (counts known by construction)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_script import load_benchmark  # noqa: E402

RAW = """\
thread (11): deepseek-ocr-engine-0;run (threading.py:10);step (/x/deepseek_ocr/engine/engine.py:195);group_pairs (/x/deepseek_ocr/kernels/moe_routing.py:305);compile (/y/triton/compiler/compiler.py:324) 30
thread (11): deepseek-ocr-engine-0;run (threading.py:10);step (/x/deepseek_ocr/engine/engine.py:195);_decode (/x/deepseek_ocr/engine/engine.py:265) 50
thread (12): deepseek-ocr-prepare_0;run (threading.py:10);make_views (/x/deepseek_ocr/processing/views.py:187) 15
thread (13): deepseek-ocr-prepare_1;run (threading.py:10);make_views (/x/deepseek_ocr/processing/views.py:187) 5
"""


def load():
    return load_benchmark("spy_summary")


def test_threads_pools_and_compiler_attribution(tmp_path, capsys):
    path = tmp_path / "raw.txt"
    path.write_text(RAW)
    spy = load()
    spy.main([str(path), "--depth", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "== deepseek-ocr-engine-0: 80 samples (80.0%)"
    assert "62.5%  _decode (deepseek_ocr/engine/engine.py:265)" in out[1]
    assert "== deepseek-ocr-prepare_N: 20 samples (20.0%)" in out  # the pool's two threads merged
    spy.main([str(path), "--grep", "compiler.py"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "== deepseek-ocr-engine-0: 80 samples (80.0%), 30 with 'compiler.py' (37.5% of the thread's)"
    assert out[1].strip() == "37.5%  group_pairs (deepseek_ocr/kernels/moe_routing.py:305)"
