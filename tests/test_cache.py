"""The cache's keys: a tensor hash with a known answer."""

from __future__ import annotations

import hashlib

import torch

from ws.core.cache import hash_tensors


def test_a_tensor_hash_reads_the_bytes_in_place_and_is_sha256_of_them():
    """The known answer: sha256 over each name, shape, dtype and the raw bytes (a copy made by
    hand here), for float32, bfloat16, a 0-d and an empty tensor, and a non-contiguous view."""
    g = torch.Generator().manual_seed(15)
    x = torch.randn(6, 5, generator=g)
    tensors = {"b": x.bfloat16(), "a": x, "s": torch.tensor(2.5), "e": torch.zeros(0, 3), "t": x.T}
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(bytes(t.reshape(-1).view(torch.uint8).tolist()))
    assert hash_tensors(tensors) == h.hexdigest()
    assert hash_tensors({**tensors, "a": x + 1e-7}) != h.hexdigest()
