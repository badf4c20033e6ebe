"""The DeepSeek-OCR tokenizer: a thin, validating wrapper around `tokenizers.Tokenizer`.

Everything comes from the checkpoint folder: the BPE model and added tokens from
`tokenizer.json`, the names of BOS/EOS/pad from `special_tokens_map.json` (or, failing that,
`tokenizer_config.json`). No token id is written into this module; only the *name* of the
image placeholder, `<image>`, is fixed, because the prompt format of the model uses it.

A tokenizer that lacks a token the model needs is refused when it is loaded
(`TokenizerError`), not halfway through building a prompt.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from tokenizers import Tokenizer as HFTokenizer

from deepseek_ocr.errors import TokenizerError

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    """Parse `path` as a JSON object (returned with its text); failures are `TokenizerError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise TokenizerError(f"{path}: file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise TokenizerError(f"{path}: cannot read file: {err}") from err
    try:
        parsed = json.loads(text)
    except ValueError as err:
        raise TokenizerError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(parsed, dict):
        raise TokenizerError(f"{path}: expected a JSON object, found {type(parsed).__name__}")
    return parsed, text


def _token_name(value: Any) -> str | None:
    """A special-token entry is either a plain string or an AddedToken-style object."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_token_names(folder: Path) -> tuple[dict[str, str], list[Path]]:
    """Names of bos/eos/pad, from special_tokens_map.json first, tokenizer_config.json second.

    Both files are optional on their own; a name found in neither is simply absent here and
    the caller decides whether that is fatal. Returns the names and the files consulted.
    """
    names: dict[str, str] = {}
    consulted: list[Path] = []
    for filename in (SPECIAL_TOKENS_MAP_FILE, TOKENIZER_CONFIG_FILE):
        path = folder / filename
        if not path.exists():
            continue
        consulted.append(path)
        data, _ = _read_json(path)
        for role in ("bos_token", "eos_token", "pad_token"):
            if role in names or data.get(role) is None:
                continue
            name = _token_name(data[role])
            if name is None:
                raise TokenizerError(f"{path}: {role} is {data[role]!r}, expected a token string "
                                     "or an object with 'content'")
            names[role] = name
    return names, consulted


class Tokenizer:
    """Text <-> ids for DeepSeek-OCR, with the ids of the tokens the model relies on.

    Attributes: `bos_id`, `eos_id`, `pad_id`, `image_id` (of `<image>`), and the names
    `bos_token`, `eos_token`, `pad_token`. Build it with `Tokenizer.from_folder`.
    """

    def __init__(self, backend: HFTokenizer, *, bos_token: str, eos_token: str,
                 pad_token: str | None, source: str = "<memory>") -> None:
        """Wrap an already-built `tokenizers.Tokenizer`; raise if a needed token is absent."""
        self._backend = backend
        self.source = source
        # Tokenizer files can carry truncation/padding settings; encode() must return every id
        # of the text, so both are switched off rather than silently honoured.
        backend.no_truncation()
        backend.no_padding()
        vocab = backend.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0

        missing = [f"{role} {token!r}" for role, token in (
            ("BOS", bos_token), ("EOS", eos_token), ("image token", IMAGE_TOKEN),
            ("pad", pad_token)) if token is not None and backend.token_to_id(token) is None]
        if missing:
            raise TokenizerError(f"{source}: vocabulary lacks {', '.join(missing)}")

        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id: int = backend.token_to_id(bos_token)
        self.eos_id: int = backend.token_to_id(eos_token)
        self.image_id: int = backend.token_to_id(IMAGE_TOKEN)
        if pad_token is None:
            # Batching needs some pad id; EOS is the usual stand-in and is never attended to
            # once masked, so it is used rather than refusing an otherwise complete tokenizer.
            logger.warning("%s: no pad token declared; padding with EOS %r", source, eos_token)
            pad_token = eos_token
        self.pad_token = pad_token
        self.pad_id: int = backend.token_to_id(pad_token)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str]) -> Tokenizer:
        """Load `tokenizer.json` and the special-token names from a checkpoint folder."""
        folder = Path(folder)
        tokenizer_path = folder / TOKENIZER_FILE
        # Parse the JSON ourselves first: the Rust loader's messages do not name the file and
        # do not separate "not JSON" from "JSON the library cannot use".
        _, text = _read_json(tokenizer_path)
        try:
            backend = HFTokenizer.from_str(text)
        # The tokenizers binding raises plain `Exception` for every build failure, so nothing
        # narrower can be caught; it is re-raised at once with the file named.
        except Exception as err:
            raise TokenizerError(f"{tokenizer_path}: tokenizers could not build a tokenizer "
                                 f"from this file: {err}") from err

        names, consulted = _special_token_names(folder)
        where = " or ".join(str(p) for p in consulted) or (
            f"{folder} (neither {SPECIAL_TOKENS_MAP_FILE} nor {TOKENIZER_CONFIG_FILE} exists)")
        for role in ("bos_token", "eos_token"):
            if role not in names:
                raise TokenizerError(f"{where}: no {role} declared")
        tokenizer = cls(backend, bos_token=names["bos_token"], eos_token=names["eos_token"],
                        pad_token=names.get("pad_token"), source=str(tokenizer_path))
        logger.debug("%s: loaded, %d ids, bos=%d eos=%d pad=%d image=%d", tokenizer_path,
                     tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id,
                     tokenizer.pad_id, tokenizer.image_id)
        return tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (largest id + 1, added tokens included).

        The model's embedding table may be larger; ids past this one decode to nothing.
        """
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, with no BOS/EOS added; special tokens written in the text are kept."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`.

        Special tokens are kept by default because the model's answers carry meaning in them
        (grounding output such as ``<|ref|>...<|/ref|><|det|>...<|/det|>``).
        """
        # int() accepts numpy/torch integer scalars; the Rust side wants plain non-negative ints.
        id_list = [int(i) for i in ids]
        negative = [i for i in id_list if i < 0]
        if negative:
            raise TokenizerError(f"{self.source}: cannot decode negative ids {negative[:5]}")
        return self._backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of `token`, or None if the vocabulary has no such token."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of `token_id`, or None if no token has that id."""
        return self._backend.id_to_token(int(token_id)) if token_id >= 0 else None

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and self._backend.token_to_id(token) is not None

    def __len__(self) -> int:
        return self._vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(source={self.source!r}, vocab_size={self._vocab_size}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id}, "
                f"image_id={self.image_id})")
