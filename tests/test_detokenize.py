from __future__ import annotations

import random

import pytest

from deepseek_ocr.generation.detokenize import IncrementalDetokenizer


class _CountingByteDecoder:
    """A byte-level fake tokenizer: id i is byte i; decode replaces broken UTF-8 with U+FFFD."""

    def __init__(self) -> None:
        self.decoded_ids = 0

    def __call__(self, ids: list[int]) -> str:
        self.decoded_ids += len(ids)
        return bytes(ids).decode("utf-8", errors="replace")


TEXTS = [
    "plain ascii text",
    "日本語のテキストです。表とグラフ。",
    "emoji 😀👍🏽 and 🇯🇵 flags",
    "mixed: Größe — 価格 ¥1,000 🎉\n<td>セル</td>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_concatenate_to_full_text(text: str) -> None:
    ids = list(text.encode("utf-8"))
    decode = _CountingByteDecoder()
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)
    # Every non-empty piece is whole characters, emitted as soon as the last byte arrives.
    assert sum(1 for p in pieces if p) == len(text)


def test_decodes_only_a_window() -> None:
    text = "日本語😀" * 400
    ids = list(text.encode("utf-8"))
    decode = _CountingByteDecoder()
    detok = IncrementalDetokenizer(decode)
    out = detok.extend(ids) + detok.flush()
    assert out == text
    # Two decodes of at most ~2 characters' bytes per step: linear, not quadratic, work.
    assert decode.decoded_ids < 20 * len(ids)


def test_truncated_tail_is_flushed_as_replacement() -> None:
    ids = list("ab😀".encode("utf-8"))[:-2]  # the emoji loses its last two bytes
    decode = _CountingByteDecoder()
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.push(i) for i in ids]
    assert "".join(pieces) == "ab"
    tail = detok.flush()
    assert "".join(pieces) + tail == decode(ids) == "ab\ufffd"


def test_invalid_bytes_in_the_middle() -> None:
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice([0x41, 0xE3, 0x81, 0x82, 0xF0, 0x9F, 0x98, 0x80, 0xFF, 0xC3, 0xA9])
               for _ in range(rng.randrange(1, 30))]
        decode = _CountingByteDecoder()
        detok = IncrementalDetokenizer(decode)
        pieces = [detok.push(i) for i in ids] + [detok.flush()]
        assert "".join(pieces) == decode(ids)


def test_tokens_that_decode_to_nothing() -> None:
    # A decoder that drops special tokens (id >= 256), as skip_special_tokens would.
    def decode(ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    ids = [300] + list("é".encode()) + [301, 302] + list("x".encode())
    detok = IncrementalDetokenizer(decode)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == decode(ids) == "éx"
