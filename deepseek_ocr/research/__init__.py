"""Optical-compression studies (DeepSeek-OCR paper, Tables 2 and 3 and §5) as reproducible runs.

    deepseek-ocr research synth --out synth-pages --tokens 700 --font-sizes 12,16,20
    deepseek-ocr research compression --data synth-pages --modes tiny,small --out results
    deepseek-ocr research forgetting --out forgetting
    deepseek-ocr research report results --bucket-width 50

Layers, bottom up (each module says what it does in its docstring):

* pages: `Page`, the unit of study; `benchmark_fox`, `benchmark_omnidocbench`, `page_sources`
  (`load_pages`: those, synthetic folders and the fine-tuning formats); `synth` and
  `synth_text` (rendered pages with exact ground truth).
* `settings`: labelled modes and the vision-token figures of a page in a mode.
* `predictors`: the `Predictor` interface, `ModelPredictor` (DeepSeek-OCR's batched
  `generate`), `OraclePredictor` (ground truth with known injected edits).
* `scoring`: every metric of a pair, from `deepseek_ocr.evaluation`.
* `records` (JSONL records and the protocol file), `sweep` (resumable runs), `tables`,
  `plots` (matplotlib, optional), `reports`.
* studies: `compression.run_compression_study`, `forgetting.run_forgetting_study`.

Nothing here prints: the `deepseek-ocr research` command (deepseek_ocr/commands/research.py)
does, from the progress callbacks and results these functions return.
"""
from .compression import StudyResult, run_compression_study
from .errors import (BenchmarkFormatError, PlotDependencyError, ProtocolMismatchError, RecordFileError,
                     ResearchError, SettingError, SynthError)
from .page_sources import FORMATS, load_pages
from .pages import LoadedPages, Page
from .predictors import ModelPredictor, OraclePredictor, Prediction, Predictor
from .records import RecordStore, load_records, read_protocol
from .reports import write_compression_reports
from .settings import Setting, parse_settings, vision_figures
from .synth import PageGeometry, make_synthetic_pages, token_counter

__all__ = [
    "BenchmarkFormatError", "FORMATS", "LoadedPages", "ModelPredictor", "OraclePredictor", "Page",
    "PageGeometry", "PlotDependencyError", "Prediction", "Predictor", "ProtocolMismatchError",
    "RecordFileError", "RecordStore", "ResearchError", "Setting", "SettingError", "StudyResult",
    "SynthError", "load_pages", "load_records", "make_synthetic_pages", "parse_settings", "read_protocol",
    "run_compression_study", "token_counter", "vision_figures", "write_compression_reports",
]
