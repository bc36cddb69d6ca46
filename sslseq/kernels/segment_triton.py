"""Row scatter-add for backward passes, two ways (Triton):

* ``atomic``: out[dst[j]] += scale[j] * src[row[j]] with ``tl.atomic_add`` (fast; the order of
  the float additions, hence the last bits, varies from run to run);
* ``deterministic``: a CSR segment reduction: items sorted (stably) by destination, one program
  per destination row sums its segment in a fixed order, so results are bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_R = 32  # items summed per step of a segment
BLOCK_D = 64  # columns per program
NUM_WARPS = 4


@triton.jit
def _segment_sum_kernel(src, rows, scale, offsets, out, D, HAS_SCALE: tl.constexpr, ACCUMULATE: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    s = tl.program_id(0)
    dc = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = dc < D
    start = tl.load(offsets + s)
    end = tl.load(offsets + s + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j0 in range(start, end, BLOCK_R):
        js = j0 + tl.arange(0, BLOCK_R)
        jm = js < end
        r = tl.load(rows + js, mask=jm, other=0)
        x = tl.load(src + r[:, None] * D + dc[None, :], mask=jm[:, None] & dm[None, :], other=0.0).to(tl.float32)
        if HAS_SCALE:
            x = x * tl.load(scale + js, mask=jm, other=0.0)[:, None]
        acc += tl.sum(x, 0)
    if ACCUMULATE:
        acc += tl.load(out + s.to(tl.int64) * D + dc, mask=dm, other=0.0)
    tl.store(out + s.to(tl.int64) * D + dc, acc, mask=dm)


@triton.jit
def _scatter_atomic_kernel(src, rows, dst, scale, out, n_items, D, HAS_SCALE: tl.constexpr,
                           BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    js = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    dc = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    jm = js < n_items
    dm = dc < D
    r = tl.load(rows + js, mask=jm, other=0)
    t = tl.load(dst + js, mask=jm, other=0)
    m = jm[:, None] & dm[None, :]
    x = tl.load(src + r[:, None] * D + dc[None, :], mask=m, other=0.0).to(tl.float32)
    if HAS_SCALE:
        x = x * tl.load(scale + js, mask=jm, other=0.0)[:, None]
    tl.atomic_add(out + t[:, None] * D + dc[None, :], x, mask=m)


def scatter_add_rows(out: torch.Tensor, dst: torch.Tensor, src: torch.Tensor, rows: torch.Tensor,
                     scale: torch.Tensor | None, deterministic: bool) -> torch.Tensor:
    """out[dst[j]] += scale[j] * src[rows[j]] for items j with dst[j] >= 0; ``out`` (S, D) float32
    contiguous (updated in place and returned), ``src`` (R, D) contiguous."""
    S, D = out.shape
    keep = dst >= 0
    dst, rows = dst[keep], rows[keep]
    scale = None if scale is None else scale[keep].float().contiguous()
    if dst.numel() == 0 or D == 0:
        return out
    dummy = scale if scale is not None else out
    if not deterministic:
        grid = (triton.cdiv(dst.numel(), BLOCK_R), triton.cdiv(D, BLOCK_D))
        _scatter_atomic_kernel[grid](src, rows.contiguous(), dst.contiguous(), dummy, out, dst.numel(), D,
                                     HAS_SCALE=scale is not None, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D,
                                     num_warps=NUM_WARPS)
        return out
    order = torch.argsort(dst, stable=True)
    counts = torch.bincount(dst, minlength=S)
    offsets = torch.zeros(S + 1, dtype=torch.int64, device=out.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    rows_sorted = rows[order].contiguous()
    scale_sorted = scale[order].contiguous() if scale is not None else out
    grid = (S, triton.cdiv(D, BLOCK_D))
    _segment_sum_kernel[grid](src, rows_sorted, scale_sorted, offsets, out, D, HAS_SCALE=scale is not None,
                              ACCUMULATE=True, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, num_warps=NUM_WARPS)
    return out
