"""`DeepseekOCR`: the public entry point (load, prepare, embed, logits, generate, save).

    >>> from deepseek_ocr import DeepseekOCR
    >>> model = DeepseekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR")
    >>> print(model.generate("page.png", prompt="<image>\\nFree OCR.", mode="gundam").text)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .config import ModelConfig
from .errors import DeepseekOCRError, PromptError
from .engine.vision_batch import encode_prepared, prompt_embeddings
from .generation.generate import GenerationResult, generate, stream
from .modeling import DeepseekOCRModel
from .processing.image_io import DEFAULT_MAX_PIXELS, load_image
from .processing.prompt import PreparedInputs, build_inputs, with_answer
from .processing.tokenizer import Tokenizer
from .processing.views import Mode, make_views, resolve_mode
from .weights.loading import DEFAULT_REPO, load_model, resolve_checkpoint
from .training.objective import LossOutput, compute_loss
from .weights.names import checkpoint_tensors, official_gradients
from .weights.saving import save_checkpoint

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}

DEFAULT_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default: bfloat16 on an accelerator, float32 on the CPU (bf16 matmuls are slow there)."""
    if dtype is None:
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(set(_DTYPES))}")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeepseekOCRError(f"{torch.cuda.get_device_name(device)} has no bfloat16 support; "
                               "pass dtype='float16' or 'float32'")
    return dtype


class DeepseekOCR:
    """The model with its tokenizer and preprocessing.

    Attributes:
        model: the `DeepseekOCRModel` (`nn.Module`).
        tokenizer: the checkpoint's `Tokenizer`.
        config: the typed `ModelConfig`.
    """

    def __init__(self, model: DeepseekOCRModel, tokenizer: Tokenizer, folder: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config: ModelConfig = model.cfg
        self.folder = folder
        self.max_pixels = DEFAULT_MAX_PIXELS

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike = DEFAULT_REPO, *,
                        device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None,
                        revision: str | None = None,
                        adapter: str | os.PathLike | None = None,
                        merge_adapter: bool = True) -> "DeepseekOCR":
        """Load from a local folder or a hub repo id (cached; honours `HF_HUB_OFFLINE`).

        Args:
            path_or_repo: folder with config.json, safetensors and tokenizer files, or a repo id.
            device: default CUDA when available, else CPU.
            dtype: float32 / bfloat16 / float16 (default bf16 on GPU, float32 on CPU).
            revision: hub revision (branch, tag or commit) for repo ids.
            adapter: a PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors)
                to add to the base weights.
            merge_adapter: fold the adapter into the weights (default: the fast generation path
                fuses q/k/v weights and would not see unmerged factors); False keeps it separate,
                e.g. to train it further.
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        folder = resolve_checkpoint(path_or_repo, revision)
        cfg = ModelConfig.from_file(folder / "config.json")
        tokenizer = Tokenizer.from_folder(folder)
        if tokenizer.vocab_size > cfg.decoder.vocab_size:
            raise DeepseekOCRError(f"{folder}: tokenizer has {tokenizer.vocab_size} ids but the "
                                   f"embedding only {cfg.decoder.vocab_size} rows")
        model = load_model(folder, cfg, device=device, dtype=dtype)
        logger.info("loaded %s on %s in %s", folder, device, dtype)
        if adapter is not None:
            from .training.adapter import load_adapter  # training code loads only when asked for
            from .training.lora import merge_lora
            load_adapter(model, adapter)
            if merge_adapter:
                merge_lora(model)
            logger.info("adapter %s %s", adapter, "merged" if merge_adapter else "loaded unmerged")
        return cls(model, tokenizer, folder)

    def save_pretrained(self, folder: str | os.PathLike, *, dtype: str | torch.dtype | None = None) -> Path:
        """Write the official layout (config.json, index, safetensors, tokenizer files).

        Args:
            folder: the checkpoint folder to write.
            dtype: storage dtype (e.g. "float32"); default the checkpoint's own (`config.torch_dtype`,
                bfloat16 for the official one), whatever dtype the model runs in. config.json
                records the dtype written.

        Refuses a model with unmerged LoRA: merge it first (`training.lora.merge_lora`) or write
        the adapter alone (`training.adapter.save_adapter`).
        """
        if any(getattr(m, "carries_lora", False) for m in self.model.modules()):
            from .training.lora import AdapterError
            raise AdapterError("the model carries unmerged LoRA factors, which the official layout "
                               "cannot hold: call deepseek_ocr.training.lora.merge_lora(model) first, "
                               "or save the adapter alone with deepseek_ocr.training.adapter.save_adapter")
        return save_checkpoint(folder, checkpoint_tensors(self.model), self.config.to_dict(), self.folder,
                               dtype=self.config.torch_dtype if dtype is None else dtype)

    @property
    def device(self) -> torch.device:
        return self.model.decoder.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.decoder.lm_head.weight.dtype

    # ----------------------------------------------------------------------- preprocessing
    def prepare(self, image=None, prompt: str | None = None, mode: str | Mode = "gundam",
                answer: str | None = None, *, pixel_codes: bool = False) -> PreparedInputs:
        """Build the model inputs for one image (a path, bytes or PIL image) or none.

        Args:
            image: the page; None for a text-only prompt.
            prompt: must contain `<image>` exactly once when an image is given (default: the
                markdown-with-grounding prompt; for text only, required).
            mode: "tiny", "small", "base", "large", "gundam", or a `Mode(...)`.
            answer: the target text of a training sample: its ids and EOS are appended and the
                result carries `labels` (-100 over BOS, the prompt and the image positions).
            pixel_codes: carry the views as uint8 levels instead of bf16 pixels (half the bytes;
                the vision tower converts them to the same pixels, bit for bit, on its device).
        """
        if prompt is None:
            if image is None:
                raise PromptError("a text-only call needs a prompt")
            prompt = DEFAULT_PROMPT
        if image is None:
            inputs = build_inputs(self.tokenizer, prompt, None, None)
        else:
            mode = resolve_mode(mode)
            views = make_views(load_image(image, max_pixels=self.max_pixels), mode, codes=pixel_codes)
            inputs = build_inputs(self.tokenizer, prompt, views, mode)
        return inputs if answer is None else with_answer(self.tokenizer, inputs, answer)

    # ---------------------------------------------------------------------------- training
    def loss(self, batch: Sequence[PreparedInputs], aux_loss: bool = True, *,
             gradient_checkpointing: bool = False) -> LossOutput:
        """The official training objective on prepared samples (`prepare(..., answer=...)`).

        Returns a `LossOutput`: `.ce` the token-mean cross entropy over every label of the batch
        (what the official code reports), `.loss` the differentiable objective (`.ce` plus the
        MoE balance loss when `aux_loss`). Padding is done here; image and text-only samples
        mix. Gradients reach the decoder, the projector, CLIP and SAM (whichever are trainable).
        """
        return compute_loss(self.model, batch, pad_id=self.tokenizer.pad_id, aux_loss=aux_loss,
                            gradient_checkpointing=gradient_checkpointing)

    def zero_grad(self) -> None:
        """Drop every parameter's gradient."""
        self.model.zero_grad(set_to_none=True)

    def official_grads(self) -> dict[str, torch.Tensor]:
        """`{official tensor name: gradient}` for every parameter that has one (experts per expert)."""
        return official_gradients(self.model)

    # ---------------------------------------------------------------------------- forward
    def encode_images(self, batch: Sequence[PreparedInputs]) -> list[torch.Tensor | None]:
        """Vision rows `[n_i, hidden]` per input (None for text-only), batching equal view sizes.

        Inputs that carry `vision_rows` already are not encoded again.
        """
        return encode_prepared(self.model, batch)

    def embed(self, inputs: PreparedInputs, image_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings `[T, hidden]`: token embeddings with the vision rows in place."""
        if image_rows is None and inputs.has_image:
            image_rows = self.encode_images([inputs])[0]
        return prompt_embeddings(self.model, inputs, image_rows)

    @torch.inference_mode()
    def logits(self, inputs: PreparedInputs) -> torch.Tensor:
        """Float32 prefill logits `[T, vocab]` at every prompt position."""
        embeds = self.embed(inputs)[None]
        positions = torch.arange(embeds.shape[1], device=self.device)[None]
        return self.model.decoder(embeds, positions)[0]

    # -------------------------------------------------------------------------- generation
    def _as_inputs(self, inputs_or_image, prompt, mode) -> list[PreparedInputs]:
        items = inputs_or_image if isinstance(inputs_or_image, (list, tuple)) else [inputs_or_image]
        prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt] * len(items)
        if len(prompts) != len(items):
            raise PromptError(f"{len(items)} inputs but {len(prompts)} prompts: give one prompt, "
                              f"or one per input")
        out = []
        for item, p in zip(items, prompts):
            if isinstance(item, PreparedInputs):
                out.append(item)
            else:
                out.append(self.prepare(item, p, mode))
        return out

    def generate(self, inputs_or_image=None, prompt: str | Sequence[str] | None = None,
                 mode: str | Mode = "gundam", **kwargs) -> GenerationResult | list[GenerationResult]:
        """Generate text for one input or a batch.

        Args:
            inputs_or_image: a `PreparedInputs`, an image (path, bytes, PIL), None for a text-only
                prompt, or a list of these (a batch; returns a list of results in order).
            prompt: the prompt (or one per batch item).
            mode: resolution mode for images.
            **kwargs: the fields of `deepseek_ocr.engine.GenerationOptions` (max_new_tokens,
                temperature, top_p, top_k, seed, no_repeat_ngram_size, windowed_ngram_size,
                ngram_window, ngram_whitelist, stop_on_repetition, ignore_eos, fast). The batch
                runs on the model's engine (`fast=False`: the plain reference loop).
        """
        batch = self._as_inputs(inputs_or_image, prompt, mode)
        results = generate(self, batch, **kwargs)
        return results if isinstance(inputs_or_image, (list, tuple)) else results[0]

    def stream(self, inputs_or_image=None, prompt: str | None = None, mode: str | Mode = "gundam",
               **kwargs) -> Iterator[str]:
        """Like `generate` for one input, yielding text pieces as they are decoded."""
        (inputs,) = self._as_inputs(inputs_or_image, prompt, mode)
        return stream(self, inputs, **kwargs)
