"""A Triton kernel writing the quantizer's Gumbel noise at given offsets, for tests that compare
it with ``sslseq.kernels.rng`` (a kernel must live at module level).

Import it inside a test, not at collection: whether ``@triton.jit`` makes an interpreted or a
compiled kernel is decided by ``TRITON_INTERPRET`` when this module is first imported.
"""

from __future__ import annotations

import triton
import triton.language as tl

from sslseq.kernels.gumbel_triton import _gumbel, _keys

__all__ = ["noise_kernel", "keys"]
keys = _keys


@triton.jit(do_not_specialize=["k1", "k2"])
def noise_kernel(out, n, base, k1, k2, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out + offs, _gumbel(offs.to(tl.int64) + base, k1, k2), mask=offs < n)
