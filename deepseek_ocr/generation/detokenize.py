"""Streaming detokenization: turning ids into text pieces as they are generated.

Byte-level BPE splits multi-byte UTF-8 characters (CJK, emoji) across tokens, so decoding after
each token would emit U+FFFD for half a character. `IncrementalDetokenizer` holds text back while
it ends in U+FFFD, and decodes only a short window of recent ids each step.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Emits the text of a growing id sequence piece by piece.

    The prefix/read offset technique: ids[:read_offset] have been emitted as text. Each step
    decodes ids[prefix_offset:read_offset] (a few ids of context, already emitted) and
    ids[prefix_offset:], and emits the difference. Decoding both with the same left context keeps
    tokenizer effects at the window's left edge (e.g. a stripped leading space) identical on both
    sides, so they cancel. Offsets advance only when the new text is complete (does not end in
    U+FFFD), so a window is usually two or three tokens long.

    The concatenation of all pieces from `push` and `flush` equals `decode_fn(all ids)` for any
    decoder whose output at a complete-character boundary does not depend on what came before
    (true of byte-level BPE with `errors="replace"`).

    Args:
        decode_fn: maps a list of ids to text, e.g. the tokenizer's decode.
    """

    def __init__(self, decode_fn: Callable[[list[int]], str]) -> None:
        self._decode = decode_fn
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def ids(self) -> list[int]:
        """All ids pushed so far (a copy)."""
        return list(self._ids)

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text ("" if nothing is complete yet)."""
        self._ids.append(int(token_id))
        return self._emit(final=False)

    def extend(self, token_ids: Sequence[int]) -> str:
        """Add several ids; return the concatenated pieces."""
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """Return whatever is still held back (an incomplete character decodes as U+FFFD here)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text):
            # Nothing visible yet (e.g. ids that decode to nothing); keep them in the window.
            return ""
        if not final and new_text.endswith(_REPLACEMENT):
            return ""  # an incomplete multi-byte character: wait for its remaining bytes
        if not new_text.startswith(prefix_text):
            # The decoder re-rendered the context differently; the slice below is then a guess.
            logger.debug("decoded window does not extend its prefix: %r vs %r", new_text, prefix_text)
        piece = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return piece
