"""What a finished training run leaves behind: the LoRA adapter (PEFT format) and the model in
the official layout (LoRA merged into it)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .lora import merge_lora


def export_run(ocr, module: nn.Module, cfg, *, rank: int, fsdp: bool, output_dir: Path) -> tuple[Path | None, Path | None]:
    """Writes `output_dir/adapter` (LoRA runs) and `output_dir/model` (`cfg.save_model`) on rank 0;
    returns `(adapter_dir, model_dir)`, None for what was not written (every other rank: both).

    Under FSDP every rank must call it: the sharded parameters are gathered back into whole
    tensors first, and FSDP2's unshard is a collective."""
    if fsdp:
        from torch.distributed.fsdp import FSDPModule
        for m in module.modules():
            if isinstance(m, FSDPModule):
                m.unshard()
    if rank != 0:
        return None, None
    adapter_dir = model_dir = None
    if cfg.uses_lora:
        from .adapter import save_adapter
        adapter_dir = save_adapter(ocr.model, output_dir / "adapter", base_model_name_or_path=cfg.model)
    if cfg.save_model:
        if cfg.uses_lora:
            merge_lora(ocr.model)  # the run is over: the merged weights are the result
        model_dir = ocr.save_pretrained(output_dir / "model")
    return adapter_dir, model_dir
