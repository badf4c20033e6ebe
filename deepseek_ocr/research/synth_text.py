"""Deterministic, licence-free text for synthetic pages: seeded sentences over a small
vocabulary written for this package, and the fitting of a text to a token budget.

The text is English-like but meaningless on purpose: a model cannot complete it from memory,
so what it reads back must come from the pixels.
"""
from __future__ import annotations

import random
from typing import Callable

VOCABULARY = tuple(dict.fromkeys("""
the of and to in is that for it as with was on be by at this from or which an are have not
but were all can has been their more one would there when will also other into some time only
these two may after first such most over new used where any then through each under between
both many those very well part while three because same during found without since number
system water light model paper value level group table study result method order point line
field form power case change place report process small large early local general public
common simple clear strong short long early later major minor basic final total single double
river stone garden window market letter engine signal circle square pattern measure record
sample surface volume weight motion energy memory context window vision token page image text
reader writer record figure chapter section column margin border corner layer frame scale
north south east west winter summer spring autumn morning evening island valley forest harbor
bridge tower street village station library museum theater hospital factory office kitchen
carry build write read measure follow open close begin finish choose return travel explain
compare improve reduce increase balance repeat describe observe collect divide gather
quickly slowly rarely often nearly almost always never perhaps together however therefore
bright quiet heavy narrow gentle careful honest modest silver golden wooden plain ancient
""".split()))
"""About 230 common English words (written for this package; no corpus or word list copied)."""

TokenCounter = Callable[[str], int]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(6, 16))]
    if rng.random() < 0.2:  # numbers appear in real pages and tokenize differently from words
        words.insert(rng.randrange(1, len(words)), str(rng.randint(2, 2025)))
    if len(words) > 8 and rng.random() < 0.4:
        cut = rng.randrange(3, len(words) - 3)
        words[cut] += ","
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def generate_paragraphs(seed: int | str, count: int) -> list[str]:
    """`count` paragraphs of 3 to 6 seeded sentences; the same seed gives the same text."""
    rng = random.Random(str(seed))
    return [" ".join(_sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(count)]


def join_paragraphs(paragraphs: list[str]) -> str:
    """Paragraphs separated by a blank line: the ground truth's only layout."""
    return "\n\n".join(paragraphs)


def _prefix(paragraphs: list[list[str]], n_words: int) -> str:
    out, left = [], n_words
    for words in paragraphs:
        if left <= 0:
            break
        out.append(" ".join(words[:left]))
        left -= len(words)
    return join_paragraphs(out)


def fit_to_tokens(paragraphs: list[str], target: int, count_tokens: TokenCounter) -> tuple[str, int]:
    """The longest word prefix of the paragraphs whose token count is at most `target`, and
    its number of words.

    Binary search on the number of words (token counts grow with words; a prefix one word longer
    never has fewer tokens in practice, and the result is checked anyway), so a page costs
    about log2(words) tokenizations. Returns ("", 0) when even one word exceeds the budget.
    """
    split = [p.split() for p in paragraphs]
    low, high = 0, sum(len(w) for w in split)
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(_prefix(split, middle)) <= target:
            low = middle
        else:
            high = middle - 1
    text = _prefix(split, low)
    while low > 0 and count_tokens(text) > target:  # guard against a non-monotone step
        low -= 1
        text = _prefix(split, low)
    return text, low


def drop_words(paragraphs: list[str], n_words: int) -> list[str]:
    """The paragraphs after their first `n_words` words (what the next page starts from)."""
    out, left = [], n_words
    for paragraph in paragraphs:
        words = paragraph.split()
        if left >= len(words):
            left -= len(words)
            continue
        out.append(" ".join(words[left:]))
        left = 0
    return out


def words_available(paragraphs: list[str]) -> int:
    return sum(len(p.split()) for p in paragraphs)


def paragraphs_of(text: str) -> list[str]:
    """A user's text as paragraphs: split at blank lines, whitespace inside each collapsed."""
    blocks = [" ".join(block.split()) for block in text.replace("\r\n", "\n").split("\n\n")]
    return [b for b in blocks if b]
