"""The official "plain" prompt template and the `<image>` token layout.

    ids = BOS + encode(text before <image>) + [<image>] * layout + encode(text after)

every piece encoded without special tokens. The layout length of one image is
`q*(q+1) + 1` for the global view (q rows of q tokens plus a newline each, then the view
separator) plus, with tiles, `(q_t*h_tiles) * (q_t*w_tiles + 1)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..errors import PromptError
from .tokenizer import Tokenizer
from .views import Mode, Views, tokens_per_side, valid_vision_tokens

IMAGE_PLACEHOLDER = "<image>"


def image_layout_length(mode: Mode, tiles: tuple[int, int], has_crops: bool) -> int:
    """Number of `<image>` ids (and of feature rows) for one image."""
    qb = tokens_per_side(mode.base_size if mode.crop else mode.image_size)
    n = qb * (qb + 1) + 1
    if has_crops:
        qt = tokens_per_side(mode.image_size)
        w_tiles, h_tiles = tiles
        n += (qt * h_tiles) * (qt * w_tiles + 1)
    return n


@dataclass
class PreparedInputs:
    """Everything the model needs for one prompt (with at most one image).

    Tensors follow the parity surface: `input_ids [T]` int64, `images_seq_mask [T]` bool,
    `images_spatial_crop [1, 2]` (`[w_tiles, h_tiles]`), `global_view [1, 3, B, B]` and
    `crops [n, 3, S, S]` (bf16-rounded pixels, or their uint8 levels when prepared with
    `pixel_codes`; None / n = 0 where absent).
    """

    input_ids: torch.Tensor
    images_seq_mask: torch.Tensor
    images_spatial_crop: torch.Tensor
    global_view: torch.Tensor | None
    crops: torch.Tensor | None
    prompt: str
    mode: Mode | None = None
    original_size: tuple[int, int] | None = None
    valid_vision_tokens: int = 0
    # Optional precomputed vision rows `[num_vision_tokens, hidden]` (from
    # `DeepseekOCR.encode_images`): when set, embed/logits/generate reuse them instead of running
    # the vision tower again (useful when the same page is decoded several ways).
    vision_rows: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)
    # Training targets (set by `with_answer`): `labels [T]` int64, -100 over BOS, the prompt and
    # every image position, the answer's ids and the final EOS as targets; `num_prompt_tokens`
    # is where the answer starts. None for an inference prompt.
    labels: torch.Tensor | None = None
    num_prompt_tokens: int | None = None
    answer: str | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def has_image(self) -> bool:
        return self.global_view is not None

    @property
    def num_vision_tokens(self) -> int:
        """`<image>` positions in the prompt (layout ids, newlines and separator included)."""
        return int(self.images_seq_mask.sum())

    def compression_ratio(self, text_tokens: int) -> float:
        """Official figure: text tokens decoded per valid vision token."""
        if not self.valid_vision_tokens:
            raise ValueError("compression ratio needs an image")
        return text_tokens / self.valid_vision_tokens


IGNORE_INDEX = -100


def with_answer(tokenizer: Tokenizer, inputs: PreparedInputs, answer: str) -> PreparedInputs:
    """The training sequence: the prompt, then the answer's ids (no special tokens), then EOS.

    Labels are -100 over everything before the answer (BOS, prompt text, image positions) and
    the token ids themselves over the answer and the EOS: the model is scored on predicting the
    answer and where it ends, as the official training code does (TRAINING.md §1).
    """
    if not isinstance(answer, str):
        raise PromptError(f"answer must be a string, got {type(answer).__name__}")
    if inputs.labels is not None:
        raise PromptError("these inputs already carry an answer")
    answer_ids = tokenizer.encode(answer) + [tokenizer.eos_id]
    n_prompt = inputs.num_tokens
    tail = torch.tensor(answer_ids, dtype=torch.int64)
    labels = torch.cat([torch.full((n_prompt,), IGNORE_INDEX, dtype=torch.int64), tail])
    return replace(
        inputs,
        input_ids=torch.cat([inputs.input_ids, tail]),
        images_seq_mask=torch.cat([inputs.images_seq_mask, torch.zeros(len(answer_ids), dtype=torch.bool)]),
        labels=labels, num_prompt_tokens=n_prompt, answer=answer, extras=dict(inputs.extras),
    )


def build_inputs(tokenizer: Tokenizer, prompt: str, views: Views | None, mode: Mode | None
                 ) -> PreparedInputs:
    """Tokenize `prompt` with the image layout in place of its `<image>` placeholder.

    Raises:
        PromptError: an image without exactly one `<image>` in the prompt, or `<image>` in a
            text-only prompt.
    """
    if not isinstance(prompt, str):
        raise PromptError(f"prompt must be a string, got {type(prompt).__name__}")
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    n_placeholders = len(pieces) - 1
    if views is None and n_placeholders:
        raise PromptError(f"the prompt has {n_placeholders} '<image>' placeholder(s) but no image was given")
    if views is not None and n_placeholders != 1:
        raise PromptError(f"the prompt must contain '<image>' exactly once for one image; found "
                          f"{n_placeholders} in {prompt!r}")
    ids = [tokenizer.bos_id]
    is_image = [False]
    ids += tokenizer.encode(pieces[0])
    is_image += [False] * (len(ids) - len(is_image))
    spatial = torch.zeros(0, 2, dtype=torch.int64)
    valid = 0
    if views is not None:
        has_crops = views.crops.shape[0] > 0
        n = image_layout_length(mode, views.tiles, has_crops)
        ids += [tokenizer.image_id] * n
        is_image += [True] * n
        tail = tokenizer.encode(pieces[1])
        ids += tail
        is_image += [False] * len(tail)
        spatial = torch.tensor([list(views.tiles)], dtype=torch.int64)
        valid = valid_vision_tokens(mode, views.original_size, views.crops.shape[0])
    return PreparedInputs(
        input_ids=torch.tensor(ids, dtype=torch.int64),
        images_seq_mask=torch.tensor(is_image, dtype=torch.bool),
        images_spatial_crop=spatial,
        global_view=views.global_view if views is not None else None,
        crops=views.crops if views is not None else None,
        prompt=prompt, mode=mode,
        original_size=views.original_size if views is not None else None,
        valid_vision_tokens=valid,
    )
