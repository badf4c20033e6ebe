from __future__ import annotations

import math

import pytest
import torch

from deepseek_ocr.errors import GenerationError
from deepseek_ocr.generation.sampling import check_finite, select_next_tokens


def _logits_from_probs(probs: list[float], rows: int) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float32)).expand(rows, -1).contiguous()


def test_greedy_is_argmax_with_lowest_id_on_ties() -> None:
    logits = torch.randn(6, 50)
    logits[2, 7] = logits[2, 11] = 100.0  # a tie: the lower id wins
    expected = torch.argmax(logits, dim=-1)
    assert torch.equal(select_next_tokens(logits), expected)
    assert torch.equal(select_next_tokens(logits, temperature=None), expected)
    assert select_next_tokens(logits)[2].item() == 7
    assert select_next_tokens(logits).dtype == torch.int64


def test_top_k_one_is_greedy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 100)
    logits[0, 3] = logits[0, 9] = 50.0
    out = select_next_tokens(logits, temperature=1.3, top_k=1, generator=g)
    assert torch.equal(out, torch.argmax(logits, dim=-1))


def test_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(4, 1000)
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(1234)
        draws.append(torch.stack([select_next_tokens(logits, temperature=0.8, top_k=50, top_p=0.9,
                                                     generator=g) for _ in range(20)]))
    assert torch.equal(draws[0], draws[1])


def test_top_p_keeps_expected_set() -> None:
    g = torch.Generator().manual_seed(0)
    logits = _logits_from_probs([0.5, 0.3, 0.15, 0.05], rows=4000)
    out = select_next_tokens(logits, temperature=1.0, top_p=0.8, generator=g)
    assert set(out.tolist()) == {0, 1}
    # Renormalized nucleus: 0.5 / 0.8 = 0.625.
    assert abs((out == 0).float().mean().item() - 0.625) < 0.03
    out = select_next_tokens(logits, temperature=1.0, top_p=0.81, generator=g)
    assert set(out.tolist()) == {0, 1, 2}
    out = select_next_tokens(logits, temperature=1.0, top_p=0.01, generator=g)
    assert set(out.tolist()) == {0}  # at least one token always survives


def test_top_k_keeps_k_largest() -> None:
    g = torch.Generator().manual_seed(0)
    logits = _logits_from_probs([0.1, 0.4, 0.05, 0.3, 0.15], rows=3000)
    out = select_next_tokens(logits, temperature=1.0, top_k=2, generator=g)
    assert set(out.tolist()) == {1, 3}


def test_top_p_applies_to_the_renormalized_top_k() -> None:
    g = torch.Generator().manual_seed(0)
    # After top_k=3 the probabilities are 4/9, 3/9, 2/9; top_p=0.7 then needs only the first two.
    logits = _logits_from_probs([0.4, 0.3, 0.2, 0.1], rows=3000)
    out = select_next_tokens(logits, temperature=1.0, top_k=3, top_p=0.7, generator=g)
    assert set(out.tolist()) == {0, 1}
    out = select_next_tokens(logits, temperature=1.0, top_k=3, top_p=0.8, generator=g)
    assert set(out.tolist()) == {0, 1, 2}


def test_frequencies_match_softmax() -> None:
    g = torch.Generator().manual_seed(7)
    base = torch.tensor([1.0, 0.2, -0.5, 2.0, float("-inf"), 0.0])
    n = 40000
    logits = base.expand(n, -1).contiguous()
    for temperature in (1.0, 0.7):
        out = select_next_tokens(logits, temperature=temperature, generator=g)
        freq = torch.bincount(out, minlength=base.numel()).float() / n
        expected = torch.softmax(base / temperature, dim=-1)
        # 4 sigma of a binomial proportion at n = 40000 is at most 0.01.
        assert torch.allclose(freq, expected, atol=0.01), (freq, expected)
        assert freq[4].item() == 0.0  # a banned token is never drawn


def test_input_not_modified() -> None:
    logits = torch.randn(3, 20)
    copy = logits.clone()
    select_next_tokens(logits, temperature=0.5, top_k=5, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits, copy)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": 1.0, "top_k": 0},
        {"temperature": 1.0, "top_k": 2.5},
        {"temperature": 1.0, "top_p": 0.0},
        {"temperature": 1.0, "top_p": 1.5},
        {"top_p": -1.0},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(GenerationError) as info:
        select_next_tokens(torch.zeros(1, 4), **kwargs)
    bad_value = list(kwargs.values())[-1]  # the last argument is the bad one
    assert repr(bad_value) in str(info.value)


def test_check_finite() -> None:
    inf = float("inf")
    logits = torch.tensor(
        [
            [0.0, 1.0, 2.0],
            [0.0, -inf, 2.0],  # banned token: legal
            [0.0, float("nan"), 2.0],
            [0.0, inf, 2.0],
            [-inf, -inf, -inf],  # nothing left to pick
        ]
    )
    assert check_finite(logits).tolist() == [False, False, True, True, True]


def test_faulty_rows_do_not_break_sampling() -> None:
    logits = torch.randn(3, 10)
    logits[1, 4] = float("nan")
    logits[2] = float("-inf")
    out = select_next_tokens(logits, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3,)
    assert ((out >= 0) & (out < 10)).all()
