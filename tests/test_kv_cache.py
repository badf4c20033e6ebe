"""The KV cache grows on demand without changing what attention sees."""
from __future__ import annotations

import pytest
import torch

from deepseek_ocr.decoder.kv_cache import KVCache


def test_growth_keeps_contents_and_limit():
    torch.manual_seed(0)
    grown = KVCache(2, 3, 4, 8, max_len=40, dtype=torch.float32, device="cpu", capacity=5)
    fixed = KVCache(2, 3, 4, 8, max_len=40, dtype=torch.float32, device="cpu")
    for n in (4, 1, 1, 7, 1, 20):  # a prefill, then single steps and a chunk
        valid = torch.rand(3, n) > 0.2
        k, v = torch.randn(3, 4, n, 8), torch.randn(3, 4, n, 8)
        for cache in (grown, fixed):
            start, _ = cache.reserve(n, valid)
            for layer in range(2):
                cache.write(layer, start, k, v)
        a = grown.write(1, grown.length - n, k, v)
        b = fixed.write(1, fixed.length - n, k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.equal(grown.key_valid[:, :grown.length], fixed.key_valid[:, :fixed.length])
    assert grown.capacity <= 40 and grown.length == 34
    with pytest.raises(RuntimeError, match="overflow"):
        grown.reserve(7, torch.ones(3, 7, dtype=torch.bool))
