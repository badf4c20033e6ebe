"""Samples -> `PreparedInputs`, lazily, with a max-length policy decided before any pixel.

A sequence's length is known without decoding the image: BOS, the prompt text's ids, the
`<image>` layout (fixed by the mode and, for tiled modes, the grid chosen from the image's
size, which the header gives), the answer's ids and EOS. `SampleDataset` counts every sample
that way when it is built, applies the policy, and decodes each page only in `__getitem__`.

Length policy: "error" raises `DataError` naming the sample; "drop" leaves it out and lists it
in `report`. Nothing is ever cut: image positions and answers stay whole.
"""
from __future__ import annotations

import logging
from typing import Literal, Sequence

from ...errors import DeepseekOCRError
from ...processing.prompt import IMAGE_PLACEHOLDER, PreparedInputs, image_layout_length
from ...processing.views import Mode, choose_grid, resolve_mode
from .images import header_size
from .records import DataError, DataReport, Sample

logger = logging.getLogger(__name__)

LengthPolicy = Literal["error", "drop"]


def image_tokens(mode: Mode, size: tuple[int, int]) -> int:
    """`<image>` positions of one `size = (width, height)` image in `mode` (as `make_views` cuts it)."""
    width, height = size
    if mode.crop and (width > mode.image_size or height > mode.image_size):
        grid = choose_grid(width, height, mode.image_size, mode.min_tiles, mode.max_tiles)
        if grid != (1, 1):  # make_views drops the tiles of a 1x1 grid
            return image_layout_length(mode, grid, True)
    return image_layout_length(mode, (1, 1), False)


def count_tokens(tokenizer, sample: Sample, mode: Mode) -> int:
    """The length of `prepare(sample.image, sample.prompt, mode, answer=sample.answer)`.

    Tokenizes the text pieces the way `build_inputs` and `with_answer` do; reads the image
    header (not its pixels) when the sample has no recorded size.
    """
    pieces = sample.prompt.split(IMAGE_PLACEHOLDER)
    n = 1 + len(tokenizer.encode(pieces[0]))  # BOS + text before <image>
    if sample.has_image:
        size = sample.image_size or header_size(sample.image, sample.source)
        sample.image_size = size
        n += image_tokens(mode, size) + len(tokenizer.encode(pieces[1]))
    return n + len(tokenizer.encode(sample.answer)) + 1  # answer ids + EOS


class SampleDataset:
    """A map-style dataset (works with `torch.utils.data.DataLoader`) of prepared samples.

    Args:
        model: a `DeepseekOCR` (only `tokenizer`, `max_pixels` and `prepare` are used).
        samples: from the readers.
        default_mode: the mode of samples without their own.
        max_length: the longest sequence allowed (prompt, image positions, answer and EOS);
            None for no limit.
        length_policy: "error" raises for the first sample over `max_length`; "drop" leaves
            each out and lists it in `report.skipped`.

    Attributes:
        samples: the samples kept, in order; `lengths[i]` is the exact length of `self[i]`.
        report: `kept` and the samples dropped by the length policy.
    """

    def __init__(self, model, samples: Sequence[Sample], *, default_mode: str | Mode = "gundam",
                 max_length: int | None = None, length_policy: LengthPolicy = "error"):
        if length_policy not in ("error", "drop"):
            raise ValueError(f"length_policy must be 'error' or 'drop', got {length_policy!r}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.model = model
        self.default_mode = resolve_mode(default_mode)
        self.max_length = max_length
        self.samples: list[Sample] = []
        self.lengths: list[int] = []
        self.report = DataReport()
        for sample in samples:
            n = count_tokens(model.tokenizer, sample, self.mode_of(sample))
            if max_length is not None and n > max_length:
                error = DataError(sample.source, self._too_long(n))
                if length_policy == "error":
                    raise error
                self.report.add_skip(error)
                continue
            self.samples.append(sample)
            self.lengths.append(n)
        self.report.kept = len(self.samples)
        if self.report.skipped:
            logger.warning("%d sample(s) over max_length=%s dropped", len(self.report.skipped), max_length)

    def _too_long(self, n: int) -> str:
        return (f"{n} tokens (prompt, image positions, answer and EOS) exceed max_length="
                f"{self.max_length}; nothing is cut: raise max_length, pick a smaller mode, or drop it")

    def mode_of(self, sample: Sample) -> Mode:
        return sample.mode if sample.mode is not None else self.default_mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> PreparedInputs:
        sample = self.samples[index]
        try:
            inputs = self.model.prepare(sample.image, sample.prompt, mode=self.mode_of(sample), answer=sample.answer)
        except DataError:
            raise
        except DeepseekOCRError as exc:
            raise DataError(sample.source, f"cannot prepare: {exc}") from exc
        # A header can hide an orientation (a PNG's late eXIf chunk): the policy must still hold.
        if self.max_length is not None and inputs.num_tokens > self.max_length:
            raise DataError(sample.source, self._too_long(inputs.num_tokens))
        self.lengths[index] = inputs.num_tokens
        inputs.extras["source"] = sample.source
        return inputs


def encode_samples(model, samples: Sequence[Sample], *, max_length: int | None = None,
                   length_policy: LengthPolicy = "error", default_mode: str | Mode = "gundam"
                   ) -> tuple[list[PreparedInputs], DataReport]:
    """Prepare every sample now (small datasets, tests); large ones want `SampleDataset`."""
    dataset = SampleDataset(model, samples, default_mode=default_mode, max_length=max_length,
                            length_policy=length_policy)
    return [dataset[i] for i in range(len(dataset))], dataset.report
