"""One counter-based RNG shared by every kernel implementation: Gumbel noise as a pure function of
(seed, element offset), so the noise is never stored (the backward regenerates it) and the
reference, chunked and Triton implementations see the same numbers.

A uint32 integer hash (Wellons' "lowbias32", two rounds keyed by the seed) → 23-bit uniform in
(0, 1), exact in float32 → Gumbel ``-log(-log(u))`` in float32. The torch version below works in
int64 with explicit 32-bit wrapping; ``gumbel_triton.py`` has the same hash on uint32 lanes.
"""

from __future__ import annotations

import torch

__all__ = ["hash_u32", "uniform", "gumbel_noise", "draw_seed", "MASK32"]

MASK32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B
_SEED_SALT = 0x9E3779B9  # keeps seed 0 from hashing like offset 0


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32): split c in 16-bit halves so nothing overflows int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def _lowbias32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def seed_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit round keys derived from ``seed`` (host side, shared with Triton)."""
    k1 = _lowbias32_int((int(seed) & MASK32) ^ _SEED_SALT)
    k2 = _lowbias32_int(k1 ^ (int(seed) >> 32 & MASK32) ^ 0x632BE5AB)
    return k1, k2


def hash_u32(offsets: torch.Tensor, seed: int) -> torch.Tensor:
    """int64 tensor of 32-bit hashes of ``offsets`` (taken mod 2**32) under ``seed``."""
    k1, k2 = seed_keys(seed)
    x = (offsets.to(torch.int64) & MASK32) ^ k1
    x = _lowbias32(x)
    return _lowbias32(x ^ k2)


def uniform(offsets: torch.Tensor, seed: int) -> torch.Tensor:
    """float32 uniforms strictly inside (0, 1): the top 23 hash bits + 1/2, times 2**-23. With 23
    bits h + 1/2 is exact in float32 (with 24, 2**24 - 1/2 rounds up to 2**24: u = 1, infinite
    noise)."""
    h = hash_u32(offsets, seed) >> 9
    return (h.to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def gumbel_noise(offsets: torch.Tensor, seed: int) -> torch.Tensor:
    """float32 standard Gumbel noise at element ``offsets`` for ``seed``."""
    return -torch.log(-torch.log(uniform(offsets, seed)))


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh 62-bit seed from torch's (CPU) generator: training stays reproducible from
    ``torch.manual_seed`` and the checkpointed RNG state, with no device sync."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))
