"""`TrainConfig`: every setting of a fine-tuning run, from a JSON/TOML file and/or overrides.

    >>> cfg = TrainConfig.from_file("run.toml", overrides={"max_steps": 200})
    >>> cfg = TrainConfig(model="deepseek-ai/DeepSeek-OCR", data=["pages/"], lora_r=16)

Files hold the field names below at the top level (TOML may also group them in tables, whose
names are ignored: `[optim] lr = 1e-4` is `lr = 1e-4`). Unknown keys are errors (with the
closest known name), so a typo never silently trains with a default. This module imports no
torch: the command line validates a configuration before loading anything heavy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .config_file import flatten, read_config_file, suggest
from .errors import TrainConfigError  # noqa: F401 (raised here, and imported from here by callers)

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"  # weights.loading.DEFAULT_REPO, without importing torch
PRESETS = ("decoder", "paper", "all", "lora")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16")
NONFINITE_POLICIES = ("stop", "skip")  # training/nonfinite.py
COMPILE_SCOPES = ("decoder", "clip", "all")  # training/compiled.py
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
DEFAULT_LR = {"lora": 2e-4, "full": 3e-5}  # the Unsloth LoRA recipe; the paper's stage-2 lr


@dataclass
class TrainConfig:
    """A fine-tuning run. Paths are kept as given (relative to the working directory).

    Model and data:
        model: base checkpoint folder or hub repo id.
        data: training data (files or folders; see `training.data.read_dataset`).
        data_format: auto, conversations, messages, jsonl, parquet, folder.
        image_root: folder that relative image paths of JSONL/Parquet records start from.
        on_error: "stop" at the first bad record, or "skip" it (listed in the report).
        eval_data: held-out data, same formats (None: no evaluation).
        eval_max_samples: evaluate on the first N held-out samples only (None: all).
        mode: default resolution mode of samples without their own.
        prompt: default prompt of records without one (None: the readers' "<image>\\nFree OCR.").
        max_length, length_policy: the longest sequence, and "error" or "drop" beyond it.

    What is trained:
        preset: decoder, paper, all, or lora (implied by `lora_r`).
        lora_r, lora_alpha (default r), lora_dropout, lora_targets (official names or
        "all-linear"; default the attention and MLP projections, experts included), lora_rslora,
        lora_modules_to_save (official module names trained in full and saved with the adapter,
        PEFT's `modules_to_save`, e.g. ["model.norm"]).

    Optimization:
        lr (default 2e-4 for LoRA, 3e-5 otherwise), vision_lr_scale (SAM's and CLIP's rate as a
        multiple of lr, e.g. 0.3; training/optim.py), min_lr_ratio, weight_decay, betas, eps,
        warmup_steps, schedule (cosine, linear, constant), max_steps and/or epochs (the first
        reached ends the run), batch_size (samples per micro-batch), grad_accum (micro-batches
        per optimizer step), max_grad_norm (0: no clipping), on_nonfinite ("stop" the run at a
        NaN/Inf loss or gradient norm, or "skip" that step's update; training/nonfinite.py),
        aux_loss (MoE balance loss),
        gradient_checkpointing, seed, dtype ("auto": bf16 autocast on CUDA, float32 on CPU;
        "bfloat16": bf16 autocast on any device; master weights always float32), master_weights
        (off by default; with bf16 compute in one process: the trainable matmul weights train as
        bf16 copies of float32 masters, cast once per step instead of at every use;
        training/precision.py. Measured on an H200 slower and larger than autocast's casts:
        benchmarks/RESULTS.md, eighth round), bf16_frozen_base (on by default; with bf16 compute
        in one process: the frozen matmul weights, a LoRA run's base and the vision tower's frozen
        part (SAM under `paper`; not when cache_vision caches its rows), are held in bf16 where
        bf16 holds their values exactly: the same arithmetic, half their memory, no casts),
        compile (torch.compile the decoder's layers, CLIP's, or "all" of both, for the training
        steps; off by default) and compile_mode ("default"; "reduce-overhead": the compiled
        layers replayed as CUDA graphs, CUDA and one process only, grad_accum 1, a graph per
        batch length, so best with batches of one length; training/compiled.py),
        device (None: CUDA when available).

    Output:
        output_dir; checkpoint_every (steps, 0: only at the end and on interruption);
        keep_checkpoints (the last K kept); eval_every (steps, 0: only at the end);
        log_every; eval_batch_size; eval_max_new_tokens (None: twice the longest reference
        of the batch plus 16, see `evaluate.py`); save_model (write the final model in the
        official layout, LoRA merged, to `output_dir/model`); cache_vision (keep the vision
        rows of each sample after its first use when the vision tower is frozen: fast, costs
        memory); progress (a progress bar); tensorboard (when installed).

    Data loading: prepare_workers (threads that prepare the next step's samples, decoding
        and cutting their images, while the current step trains; 0: read in the training
        thread). The samples, their order and the run are the same with any value.
    """

    model: str = DEFAULT_MODEL
    data: list[str] = field(default_factory=list)
    data_format: str = "auto"
    image_root: str | None = None
    on_error: str = "stop"
    eval_data: list[str] | None = None
    eval_max_samples: int | None = None
    mode: str = "gundam"
    prompt: str | None = None
    max_length: int | None = None
    length_policy: str = "error"

    preset: str | None = None
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_targets: list[str] | str | None = None
    lora_rslora: bool = False
    lora_modules_to_save: list[str] | None = None

    lr: float | None = None
    vision_lr_scale: float = 1.0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    on_nonfinite: str = "stop"
    aux_loss: bool = True
    gradient_checkpointing: bool = False
    seed: int = 0
    strategy: str = "ddp"  # under torchrun: "ddp" or "fsdp" (FSDP2, full fine-tuning)
    dtype: str = "auto"
    master_weights: bool = False
    bf16_frozen_base: bool = True
    compile: str | None = None
    compile_mode: str = "default"
    device: str | None = None

    output_dir: str = "train-output"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0
    log_every: int = 10
    eval_batch_size: int | None = None
    eval_max_new_tokens: int | None = None
    save_model: bool = True
    cache_vision: bool = False
    prepare_workers: int = 2
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if isinstance(self.betas, tuple):
            self.betas = list(self.betas)
        if isinstance(self.lora_targets, tuple):
            self.lora_targets = list(self.lora_targets)
        if isinstance(self.lora_modules_to_save, (str, tuple)):
            self.lora_modules_to_save = ([self.lora_modules_to_save] if isinstance(self.lora_modules_to_save, str)
                                         else list(self.lora_modules_to_save))
        problems = _type_problems(self) or _value_problems(self)
        if problems:
            raise TrainConfigError("invalid training configuration:", problems)

    # ---------------------------------------------------------------------------- derived
    @property
    def uses_lora(self) -> bool:
        return self.preset == "lora" or self.lora_r is not None

    @property
    def trainable_preset(self) -> str:
        return "lora" if self.uses_lora else (self.preset or "decoder")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR["lora" if self.uses_lora else "full"]

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step on one rank (`batch_size * grad_accum`)."""
        return self.batch_size * self.grad_accum

    def total_steps(self, samples_per_epoch: int) -> int:
        """Optimizer steps of the run: `max_steps`, or `epochs` of `samples_per_epoch` (per rank)."""
        steps = []
        if self.max_steps is not None:
            steps.append(self.max_steps)
        if self.epochs is not None:
            steps.append(max(1, math.ceil(self.epochs * samples_per_epoch / self.samples_per_step)))
        return min(steps)

    # ------------------------------------------------------------------------- (de)serialize
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "configuration") -> "TrainConfig":
        if not isinstance(data, Mapping):
            raise TrainConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
        flat = flatten(data)
        known = {f.name for f in fields(cls)}
        unknown = [k for k in flat if k not in known]
        if unknown:
            raise TrainConfigError(f"{source}: unknown setting(s):", [suggest(k, known) for k in unknown])
        try:
            return cls(**flat)
        except TrainConfigError as exc:
            raise TrainConfigError(f"{source}: invalid training configuration:", exc.problems) from None

    @classmethod
    def from_file(cls, path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
                  ) -> "TrainConfig":
        """Read a `.json` or `.toml` file (or nothing), then apply `overrides` (e.g. CLI flags;
        None values are ignored, so unset flags keep the file's value)."""
        data: dict[str, Any] = {}
        source = "command line"
        if path is not None:
            data = flatten(read_config_file(path))
            source = str(path)
        for key, value in (overrides or {}).items():
            if value is not None:
                data[key] = value
        return cls.from_dict(data, source)


# ------------------------------------------------------------------------------- validation
_INT = ("warmup_steps", "batch_size", "grad_accum", "seed", "checkpoint_every", "keep_checkpoints",
        "eval_every", "log_every", "prepare_workers")
_OPT_INT = ("max_length", "eval_max_samples", "max_steps", "lora_r", "eval_batch_size", "eval_max_new_tokens")
_FLOAT = ("lora_dropout", "vision_lr_scale", "min_lr_ratio", "weight_decay", "eps", "max_grad_norm")
_OPT_FLOAT = ("lora_alpha", "lr", "epochs")
_BOOL = ("lora_rslora", "aux_loss", "gradient_checkpointing", "save_model", "cache_vision", "progress",
         "tensorboard", "master_weights", "bf16_frozen_base")
_STR = ("model", "data_format", "on_error", "on_nonfinite", "mode", "length_policy", "schedule", "dtype", "output_dir",
        "strategy", "compile_mode")
_OPT_STR = ("image_root", "prompt", "preset", "device", "compile")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_problems(c: TrainConfig) -> list[str]:
    p = []
    for name in _INT + _OPT_INT:
        v = getattr(c, name)
        if not (_is_int(v) or (v is None and name in _OPT_INT)):
            p.append(f"{name} must be an integer, got {v!r}")
    for name in _FLOAT + _OPT_FLOAT:
        v = getattr(c, name)
        if not (_is_num(v) or (v is None and name in _OPT_FLOAT)):
            p.append(f"{name} must be a number, got {v!r}")
    for name in _BOOL:
        if not isinstance(getattr(c, name), bool):
            p.append(f"{name} must be true or false, got {getattr(c, name)!r}")
    for name in _STR + _OPT_STR:
        v = getattr(c, name)
        if not (isinstance(v, str) or (v is None and name in _OPT_STR)):
            p.append(f"{name} must be a string, got {v!r}")
    for name in ("data", "eval_data"):
        v = getattr(c, name)
        if v is None and name == "eval_data":
            continue
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            p.append(f"{name} must be a path or a list of paths, got {v!r}")
    if not (isinstance(c.betas, list) and len(c.betas) == 2 and all(_is_num(b) for b in c.betas)):
        p.append(f"betas must be two numbers, got {c.betas!r}")
    m = c.lora_modules_to_save
    if not (m is None or (isinstance(m, list) and all(isinstance(x, str) for x in m))):
        p.append(f"lora_modules_to_save must be a list of module names, got {m!r}")
    t = c.lora_targets
    if not (t is None or isinstance(t, str) or (isinstance(t, list) and t and all(isinstance(x, str) for x in t))):
        p.append(f"lora_targets must be a module name, a list of them, or 'all-linear'; got {t!r}")
    return p


def _value_problems(c: TrainConfig) -> list[str]:
    p = []
    if not c.data:
        p.append("data is empty: give at least one training file or folder")
    if c.preset is not None and c.preset not in PRESETS:
        p.append(f"preset must be one of {', '.join(PRESETS)}, got {c.preset!r}")
    if c.lora_r is not None and c.preset not in (None, "lora"):
        p.append(f"lora_r is set but preset is {c.preset!r}: LoRA trains only the adapter (drop one of them)")
    if c.preset == "lora" and c.lora_r is None:
        p.append("preset 'lora' needs lora_r (the rank, e.g. 16)")
    if c.lora_r is not None and c.lora_r < 1:
        p.append(f"lora_r must be at least 1, got {c.lora_r}")
    if c.lora_alpha is not None and c.lora_alpha <= 0:
        p.append(f"lora_alpha must be positive, got {c.lora_alpha}")
    if not 0.0 <= c.lora_dropout < 1.0:
        p.append(f"lora_dropout must be in [0, 1), got {c.lora_dropout}")
    if c.strategy not in ("ddp", "fsdp"):
        p.append(f"strategy must be ddp or fsdp, got {c.strategy!r}")
    if c.schedule not in SCHEDULES:
        p.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if c.dtype not in DTYPES:
        p.append(f"dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}")
    if c.compile is not None and c.compile not in COMPILE_SCOPES:
        p.append(f"compile must be one of {', '.join(COMPILE_SCOPES)} (or unset), got {c.compile!r}")
    if c.compile_mode not in COMPILE_MODES:
        p.append(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {c.compile_mode!r}")
    elif c.compile_mode != "default" and c.compile is None:
        p.append(f"compile_mode {c.compile_mode!r} needs compile (decoder, clip or all)")
    if c.compile_mode == "reduce-overhead" and c.compile is not None and c.gradient_checkpointing:
        p.append("compile_mode 'reduce-overhead' (CUDA graphs) does not combine with gradient_checkpointing: "
                 "drop one of them")
    if c.compile_mode == "reduce-overhead" and c.compile is not None and c.grad_accum > 1:
        # A micro-batch's gradients can come out of the graphs' memory pool, which the next
        # micro-batch's replay reuses before the optimizer step has read them; refused until a
        # GPU test shows accumulation exact (only grad_accum 1 has run on one).
        p.append("compile_mode 'reduce-overhead' (CUDA graphs) with grad_accum > 1 is not supported: put the step's "
                 "samples in batch_size, or use compile_mode 'default'")
    if c.on_error not in ("stop", "skip"):
        p.append(f"on_error must be 'stop' or 'skip', got {c.on_error!r}")
    if c.on_nonfinite not in NONFINITE_POLICIES:
        p.append(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {c.on_nonfinite!r}")
    if c.length_policy not in ("error", "drop"):
        p.append(f"length_policy must be 'error' or 'drop', got {c.length_policy!r}")
    if c.max_steps is None and c.epochs is None:
        p.append("give max_steps and/or epochs: the run needs an end")
    if c.max_steps is not None and c.max_steps < 1:
        p.append(f"max_steps must be at least 1, got {c.max_steps}")
    if c.epochs is not None and not c.epochs > 0:
        p.append(f"epochs must be positive, got {c.epochs}")
    if c.lr is not None and not c.lr > 0:
        p.append(f"lr must be positive, got {c.lr}")
    if not c.vision_lr_scale > 0:
        p.append(f"vision_lr_scale must be positive, got {c.vision_lr_scale}")
    if not 0.0 <= c.min_lr_ratio <= 1.0:
        p.append(f"min_lr_ratio must be in [0, 1], got {c.min_lr_ratio}")
    if c.weight_decay < 0:
        p.append(f"weight_decay must be >= 0, got {c.weight_decay}")
    if not all(0.0 <= b < 1.0 for b in c.betas):
        p.append(f"betas must each be in [0, 1), got {c.betas}")
    if not c.eps > 0:
        p.append(f"eps must be positive, got {c.eps}")
    if c.max_grad_norm < 0:
        p.append(f"max_grad_norm must be >= 0 (0: no clipping), got {c.max_grad_norm}")
    for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
        if getattr(c, name) < 1:
            p.append(f"{name} must be at least 1, got {getattr(c, name)}")
    for name in ("warmup_steps", "checkpoint_every", "eval_every", "prepare_workers"):
        if getattr(c, name) < 0:
            p.append(f"{name} must be >= 0, got {getattr(c, name)}")
    for name in ("eval_batch_size", "eval_max_new_tokens", "eval_max_samples"):
        v = getattr(c, name)
        if v is not None and v < 1:
            p.append(f"{name} must be at least 1, got {v}")
    if c.max_length is not None and c.max_length < 2:
        p.append(f"max_length must be at least 2, got {c.max_length}")
    if not c.output_dir:
        p.append("output_dir is empty")
    return p


# Settings a resumed run may change: they decide when things happen and where, not what the
# optimizer sees, so the loss curve after a resume still equals the uninterrupted one
# (master_weights, bf16_frozen_base: the same bf16 values and float32 updates, cast at another time;
# compile, compile_mode: the same layers' arithmetic, fused and launched otherwise).
RESUMABLE_CHANGES = frozenset({
    "max_steps", "epochs", "output_dir", "checkpoint_every", "keep_checkpoints", "eval_every", "log_every",
    "eval_data", "eval_max_samples", "eval_batch_size", "eval_max_new_tokens", "save_model", "progress",
    "tensorboard", "device", "cache_vision", "on_error", "image_root", "prepare_workers", "master_weights",
    "bf16_frozen_base", "on_nonfinite", "compile", "compile_mode",
})


def resume_differences(saved: Mapping[str, Any], current: TrainConfig) -> list[str]:
    """Settings that differ from the checkpoint's and would change the training itself. A
    setting the checkpoint does not name (written before the setting existed) had its default."""
    now = current.to_dict()
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in fields(TrainConfig)}
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in RESUMABLE_CHANGES:
            continue
        was = saved.get(key, defaults.get(key))
        if was != now.get(key):
            out.append(f"{key}: checkpoint {was!r}, now {now.get(key)!r}")
    return out
