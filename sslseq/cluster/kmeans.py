"""Offline k-means for HuBERT-style targets: fit on sampled frames, label every utterance.

The core is plain torch (CPU, or CUDA when present). Distances are computed in row
chunks as ``||c||^2 - 2 x.c`` (``||x||^2`` is constant per row), so memory is at most
``chunk x K`` and the work is one float32 matmul plus an argmin per chunk. The fit is
k-means++ on a subsample, Lloyd on a larger subsample, then Lloyd on all points; Lloyd
keeps Hamerly's distance bounds so that only points that may change cluster are
recomputed. This reaches a lower inertia than mini-batch k-means at a fraction of its cost.

Under torchrun (or any initialised torch.distributed group) the fit is data-parallel: each
process holds one contiguous block of the sample, and every Lloyd iteration all-reduces the
per-cluster sums and counts, so all processes hold the same centroids. One process is the
world-size-1 case of the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from sslseq.data.labels import LABELS_DICT, LABELS_FILES, LABELS_META
from sslseq.hw import resolve_device
from sslseq.utils import SslseqError, atomic_path, atomic_write_text, file_record, get_logger, progress

log = get_logger("sslseq.cluster.kmeans")

# Rows per distance chunk: a (CHUNK, K) float32 block stays cache-sized for K of a few hundred.
CHUNK = 1024
DICT_NAME = LABELS_DICT


def _chunk_rows(k: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1024, (1 << 27) // max(k, 1))  # ~512 MB of distances per chunk
    return max(256, min(CHUNK, (1 << 20) // max(k, 1) * 2))


def _float32(device: torch.device):
    """Distances in float32 even inside a caller's autocast region (a bf16 ``addmm`` flips
    nearest centroids; worker threads start without autocast, the calling thread may not)."""
    return torch.autocast(device_type=device.type, enabled=False)


def _row_parallel(n: int, chunk: int, workers: int, body) -> None:
    """Run ``body(start, end)`` over [0, n) split into ``workers`` contiguous chunk-aligned
    ranges, one Python thread each (torch releases the GIL in its ops).

    One coarse split per pass instead of OpenMP inside every small op: on shared cores a
    descheduled OpenMP thread stalls every op, while here the other thread keeps working.
    """
    if workers <= 1 or n < 8 * chunk * workers:
        body(0, n)
        return
    per = math.ceil(math.ceil(n / workers) / chunk) * chunk
    ranges = [(s, min(n, s + per)) for s in range(0, n, per)]
    with ThreadPoolExecutor(len(ranges)) as ex:
        for f in [ex.submit(body, lo, hi) for lo, hi in ranges]:
            f.result()  # re-raise a worker's error


def _cpu_workers(device: torch.device, cpu_threads: int | None) -> int:
    return 1 if device.type != "cpu" else max(1, cpu_threads or torch.get_num_threads())


def assign(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    chunk: int | None = None,
    need_dist: bool = True,
    cpu_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nearest centroid of every row of ``x``: (labels int64 (N,), squared distances float32 (N,) or None).

    ``x`` may live on the CPU while ``centroids`` are on another device; chunks are moved.
    On the CPU, rows are split over ``cpu_threads`` threads (None: torch's thread count).
    """
    device = centroids.device
    workers = _cpu_workers(device, cpu_threads)
    with _torch_threads(1 if workers > 1 else None):
        return _assign(x, centroids, chunk=chunk, need_dist=need_dist, workers=workers)


def _assign(x, centroids, *, chunk=None, need_dist=True, workers=1):
    device = centroids.device
    k = centroids.shape[0]
    chunk = chunk or _chunk_rows(k, device)
    c = centroids.float()
    c_sq = (c * c).sum(1)
    c_t = c.t().contiguous()
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=device)
    dist = torch.empty(n, dtype=torch.float32, device=device) if need_dist else None

    def body(lo: int, hi: int) -> None:
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            xb = x[s:e].to(device, torch.float32, non_blocking=True)
            d = torch.addmm(c_sq, xb, c_t, alpha=-2.0)  # ||c||^2 - 2 x.c: same argmin as the full distance
            if need_dist:
                m, i = d.min(1)
                # Add ||x||^2 back; clamp the tiny negatives that cancellation can produce.
                dist[s:e] = (m + (xb * xb).sum(1)).clamp_min_(0.0)
            else:
                i = d.argmin(1)
            labels[s:e] = i

    with _float32(device):
        _row_parallel(n, chunk, workers, body)
    return labels, dist


def inertia(x: torch.Tensor, centroids: torch.Tensor, *, chunk: int | None = None, cpu_threads: int | None = None) -> float:
    """Sum of squared distances of the rows of ``x`` to their nearest centroid (float64 accumulation)."""
    _, dist = assign(x, centroids, chunk=chunk, cpu_threads=cpu_threads)
    return float(dist.double().sum())


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Temporarily set torch's intra-op threads (None: leave as is)."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def kmeans_plus_plus_init(
    x: torch.Tensor, k: int, generator: torch.Generator, *, n_local_trials: int | None = None
) -> torch.Tensor:
    """Greedy k-means++: each step draws ``n_local_trials`` candidates with probability
    proportional to D(x)^2 and keeps the one that lowers the potential most. Returns (k, D)."""
    with _float32(x.device):
        return _kmeans_plus_plus(x, k, generator, n_local_trials)


def _kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, n_local_trials: int | None) -> torch.Tensor:
    n, dim = x.shape
    if k > n:
        raise SslseqError(f"k-means++: k={k} clusters but only {n} points; lower --k or sample more frames")
    if n_local_trials is None:
        n_local_trials = 2 + int(math.log(k))  # the usual greedy k-means++ choice
    device = x.device
    x = x.float()
    x_sq = (x * x).sum(1)
    # (D, N) layout: candidate distances come out as (trials, N) rows, so the broadcast
    # add/minimum/sum below run along contiguous memory (several times faster than (N, trials)).
    x_t = x.t().contiguous()
    chunk = max(1, (1 << 22) // n_local_trials)  # columns per (trials, chunk) block: <= 16 MB
    centers = torch.empty(k, dim, dtype=torch.float32, device=device)
    first = int(torch.randint(n, (1,), generator=generator))
    centers[0] = x[first]
    closest = (x_sq - 2.0 * (x @ x[first]) + x_sq[first]).clamp_min_(0.0)
    for c in range(1, k):
        # Cumulative sums in float64: float32 loses the small weights over millions of points.
        cum = torch.cumsum(closest, 0, dtype=torch.float64)
        if float(cum[-1]) <= 0.0:  # fewer distinct points than k: any point will do
            idx = torch.randint(n, (n_local_trials,), generator=generator).to(device)
        else:
            r = torch.rand(n_local_trials, generator=generator, dtype=torch.float64).to(device) * cum[-1]
            idx = torch.searchsorted(cum, r).clamp_(max=n - 1)
        cand = x[idx]
        cand_sq = x_sq[idx, None]
        blocks = []
        pots = torch.zeros(n_local_trials, dtype=torch.float64, device=device)
        for s in range(0, n, chunk):
            d = torch.addmm(cand_sq, cand, x_t[:, s : s + chunk], alpha=-2.0).add_(x_sq[None, s : s + chunk])
            torch.minimum(d, closest[None, s : s + chunk], out=d)  # new D(x)^2 if that candidate is added
            pots += d.sum(1, dtype=torch.float64)
            blocks.append(d)
        best = int(pots.argmin())
        centers[c] = cand[best]
        closest = torch.cat([d[best] for d in blocks]).clamp_min_(0.0)
    return centers


class _Ranks:
    """This process's share of a k-means fit and the collectives the fit needs.

    The fit's points are split over the processes of the torch.distributed group in rank
    order: rank r holds global rows [lo, hi). With one process (``distributed=False``, or a
    group of size 1) every collective is the identity, so the single-process fit is the same
    code with no communication.
    """

    def __init__(self, n_local: int, *, distributed: bool, device: torch.device):
        self.world, self.rank, self.comm_device = 1, 0, device
        if distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise SslseqError("distributed k-means needs an initialised torch.distributed group (run under torchrun)")
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            # NCCL reduces CUDA tensors only; gloo takes CPU tensors.
            nccl = "nccl" in str(dist.get_backend()).lower()
            self.comm_device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        sizes = self.all_gather(torch.tensor([n_local], dtype=torch.int64)).tolist()
        self.n = int(sum(sizes))
        self.lo = int(sum(sizes[: self.rank]))
        self.hi = self.lo + int(n_local)

    def all_sum(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Element-wise sums over the processes, in one float64 all-reduce (inputs untouched)."""
        if self.world == 1:
            return list(tensors)
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).to(self.comm_device, torch.float64) for t in tensors])
        dist.all_reduce(flat)
        out, at = [], 0
        for t in tensors:
            out.append(flat[at : at + t.numel()].reshape(t.shape).to(t.device, t.dtype))
            at += t.numel()
        return out

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``t`` on every process (a collective that makes identical what must be)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        buf = t.to(self.comm_device).contiguous()
        dist.broadcast(buf, src=0)
        return buf.to(t.device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every process's ``t`` (same shape on all) concatenated along dim 0 in rank order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        buf = t.to(self.comm_device).contiguous()
        out = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(out, buf)
        return torch.cat(out).to(t.device)

    def local_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The global row indices ``idx`` that this process holds, as local indices, in the order of ``idx``."""
        if self.world == 1:
            return idx
        return idx[(idx >= self.lo) & (idx < self.hi)] - self.lo

    def gather_rows(self, x: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """Global rows ``idx`` (None: all rows) of the split matrix, on every process, in the order of ``idx``.

        Each process fills the rows it holds into a zero matrix and the matrices are summed:
        adding zeros is exact, so every process gets the very rows of one process's fit.
        """
        if self.world == 1:
            return x if idx is None else x[idx.to(x.device)]
        if idx is None:
            idx = torch.arange(self.n)
        idx = idx.cpu()
        buf = torch.zeros(len(idx), x.shape[1], dtype=torch.float32, device=x.device)
        mine = torch.nonzero((idx >= self.lo) & (idx < self.hi)).flatten()
        buf[mine.to(x.device)] = x[(idx[mine] - self.lo).to(x.device)].float()
        import torch.distributed as dist

        buf = buf.to(self.comm_device)
        dist.all_reduce(buf)
        return buf.to(x.device)

    def farthest(self, score: torch.Tensor, x: torch.Tensor, m: int) -> torch.Tensor:
        """The rows of the (up to) ``m`` points with the largest ``score`` over all processes, largest first."""
        m_local = min(m, score.shape[0])
        vals, idx = torch.topk(score, m_local)
        rows = x[idx.to(x.device)].to(score.device, torch.float32)
        if self.world == 1:
            return rows
        # Pad to m per process so the gather has one shape; padding never wins (-inf).
        pad = m - m_local
        vals = torch.cat([vals.float(), torch.full((pad,), -math.inf, device=vals.device)])
        rows = torch.cat([rows, torch.zeros(pad, x.shape[1], device=rows.device)])
        all_vals, all_rows = self.all_gather(vals), self.all_gather(rows)
        best = torch.topk(all_vals, min(m, self.n)).indices
        return all_rows[best]


def fit_kmeans(
    x: torch.Tensor,
    k: int,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    init_size: int = 50_000,
    warm_size: int = 300_000,
    init: torch.Tensor | None = None,
    cpu_threads: int | None = None,
    verbose: bool = True,
    distributed: bool = False,
) -> tuple[torch.Tensor, float, int]:
    """Fit k-means to ``x`` (N, D). Returns (centroids (K, D) float32 on the CPU, inertia, iterations).

    Full-batch Lloyd by default; stops when the relative inertia change between iterations
    falls below ``tol``. With ``batch_size`` set, mini-batch k-means (per-centroid learning
    rates 1/count) over ``max_iter`` epochs, for data too big to sweep many times.
    k-means++ runs on a seeded subsample of ``init_size`` points; when N > 2 ``warm_size``,
    Lloyd first converges on a subsample of ``warm_size`` points (cheap passes) and then
    polishes on all of ``x``, where the bounds now skip most points. The returned inertia is
    that of the returned centroids on all of ``x``.

    On the CPU, distance passes split their rows over ``cpu_threads`` Python threads (None:
    torch's thread count, e.g. OMP_NUM_THREADS) while every torch op runs single-threaded:
    OpenMP inside thousands of small ops stalls badly when the cores are shared.

    With ``distributed=True`` (an initialised torch.distributed group, e.g. under torchrun),
    ``x`` is this process's block of the points: the blocks of ranks 0, 1, ... concatenated
    are the N points of the fit (blocks may differ in size, or be empty). Every process gets
    the same result, equal to a one-process fit on the concatenation up to float summation
    order: the random draws are over global row indices with the same seed, k-means++ runs
    on the same gathered subsample (rank 0's result is broadcast), and each Lloyd iteration
    all-reduces the per-cluster sums and counts. Every process must make the same call.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    workers = _cpu_workers(dev, cpu_threads)
    if x.ndim != 2:
        raise SslseqError(f"k-means expects a (frames, dim) matrix, got shape {tuple(x.shape)}")
    ranks = _Ranks(x.shape[0], distributed=distributed, device=dev)
    # Torch ops run single-threaded; the big passes split rows over ``workers`` threads instead.
    with _torch_threads(1 if dev.type == "cpu" else None):
        return _fit(x, k, max_iter=max_iter, tol=tol, seed=seed, batch_size=batch_size, dev=dev,
                    init_size=init_size, warm_size=warm_size, init=init, verbose=verbose and ranks.rank == 0,
                    workers=workers, ranks=ranks)


def _fit(x, k, *, max_iter, tol, seed, batch_size, dev, init_size, warm_size, init, verbose, workers, ranks):
    n = ranks.n  # points over all processes; x holds rows [ranks.lo, ranks.hi)
    if k < 1 or k > n:
        raise SslseqError(f"k-means: k={k} must be between 1 and the number of frames ({n}); lower --k")
    if batch_size and ranks.world > 1:
        raise SslseqError("mini-batch k-means (batch_size) runs in one process; use full-batch Lloyd under torchrun")
    gen = torch.Generator().manual_seed(seed)
    # Keep the data on the GPU only if it fits comfortably; else stream chunks from the CPU.
    if dev.type == "cuda" and x.numel() * 4 < 0.5 * torch.cuda.mem_get_info(dev)[0]:
        x = x.to(dev, torch.float32)
    else:
        x = x.float()

    t0 = time.perf_counter()
    if init is not None:
        centroids = ranks.broadcast(init.to(dev, torch.float32).clone())
    else:
        # A permutation of the global row indices: the same on every process (same seed).
        perm = torch.randperm(n, generator=gen) if n > min(init_size, warm_size) else None
        sub = ranks.gather_rows(x, None if n <= init_size else perm[:init_size])
        # Every process runs the same k-means++ (keeping the generators in step); rank 0's
        # result is broadcast so that the processes agree even if their arithmetic does not.
        centroids = ranks.broadcast(kmeans_plus_plus_init(sub.to(dev), k, gen))
        del sub
    if verbose:
        log.info("k-means++ init of %d centroids on %d points: %.1fs", k, min(n, init_size), time.perf_counter() - t0)

    if batch_size:
        centroids, n_iter = _minibatch(x, centroids, max_iter=max_iter, tol=tol, batch_size=batch_size, gen=gen, verbose=verbose)
        return centroids.cpu(), float(_assign(x, centroids, workers=workers)[1].double().sum()), n_iter

    if init is None and warm_size and n > 2 * warm_size:
        if verbose:
            log.info("k-means: warm start on a subsample of %d points", warm_size)
        # This process's rows of the global warm subsample (all of them, in perm order, for one process).
        warm = ranks.local_rows(perm[:warm_size]).to(x.device)
        centroids, _, _ = _lloyd(
            x[warm], centroids, max_iter=max_iter, tol=tol, t0=t0, verbose=verbose, workers=workers, ranks=ranks
        )
        del warm
        if verbose:
            log.info("k-means: all %d points", n)
    centroids, cur, n_iter = _lloyd(
        x, centroids, max_iter=max_iter, tol=tol, t0=t0, verbose=verbose, workers=workers, ranks=ranks
    )
    return centroids.cpu(), cur, n_iter


def _assign_top2(x: torch.Tensor, centroids: torch.Tensor, chunk: int | None = None, workers: int = 1):
    """(nearest index, distance to it, distance to the second nearest) per row; plain (not squared) distances."""
    k = centroids.shape[0]
    device = centroids.device
    chunk = chunk or _chunk_rows(k, device)
    c_sq = (centroids * centroids).sum(1)
    c_t = centroids.t().contiguous()
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=device)
    d1 = torch.empty(n, dtype=torch.float32, device=device)
    d2 = torch.full((n,), math.inf, dtype=torch.float32, device=device)

    def body(lo: int, hi: int) -> None:
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            xb = x[s:e].to(device, torch.float32)
            d = torch.addmm(c_sq, xb, c_t, alpha=-2.0)
            x_sq = (xb * xb).sum(1, keepdim=True)
            if k >= 2:
                v, i = d.topk(2, dim=1, largest=False)  # sorted ascending
                v = v.add_(x_sq).clamp_min_(0.0).sqrt_()
                labels[s:e], d1[s:e], d2[s:e] = i[:, 0], v[:, 0], v[:, 1]
            else:
                labels[s:e] = 0
                d1[s:e] = (d[:, 0] + x_sq[:, 0]).clamp_min_(0.0).sqrt_()

    with _float32(device):
        _row_parallel(n, chunk, workers, body)
    return labels, d1, d2


def _cluster_sums(x: torch.Tensor, labels: torch.Tensor, k: int, workers: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster float64 sums and counts of the rows of ``x``."""
    dev = labels.device
    step = 1 << 16
    parts: dict[int, torch.Tensor] = {}

    def body(lo: int, hi: int) -> None:
        # Sum chunks in float32 (fast index_add_), accumulate chunks in float64 (no drift over millions).
        acc = torch.zeros(k, x.shape[1], dtype=torch.float64, device=dev)
        for s in range(lo, hi, step):
            e = min(hi, s + step)
            part = torch.zeros(k, x.shape[1], dtype=torch.float32, device=dev)
            part.index_add_(0, labels[s:e], x[s:e].to(dev, torch.float32))
            acc += part
        parts[lo] = acc

    _row_parallel(x.shape[0], step, workers, body)
    # Fixed summation order (by range), so results do not depend on thread timing.
    return torch.stack([parts[lo] for lo in sorted(parts)]).sum(0), torch.bincount(labels, minlength=k).double()


def _lloyd(
    x: torch.Tensor,
    centroids: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    t0: float,
    verbose: bool,
    workers: int = 1,
    ranks: _Ranks | None = None,
):
    """Full-batch Lloyd with Hamerly's bounds (exact: same iterates as plain Lloyd).

    Each point keeps an upper bound ``u`` on the distance to its centroid and a lower bound
    ``l`` on the distance to any other; when centroids move by ``delta``, ``u += delta[a]`` and
    ``l -= max delta``. Only points with ``u > max(l, s[a])`` (``s``: half the distance to the
    nearest other centroid) can change cluster and get their distances recomputed, which after
    the first few iterations is a small fraction. Cluster sums are updated incrementally from
    the points that moved, and the inertia comes from the sums in O(K D):
    sum ||x - c_a||^2 = sum ||x||^2 - 2 sum_j c_j . S_j + sum_j n_j ||c_j||^2.

    Across processes (``ranks``): labels, bounds and the sums/counts of this process's rows
    are local; each iteration all-reduces the sums and counts (one K x (D+1) float64 message),
    from which every process computes the same inertia, stopping test and centroids.
    """
    ranks = ranks or _Ranks(x.shape[0], distributed=False, device=centroids.device)
    k = centroids.shape[0]
    dev = centroids.device
    # Row norms in float32 (each ~1e-7 relative), summed in float64: ample for a relative tol >= 1e-6.
    x_sq_local = sum(float(x[s : s + (1 << 18)].pow(2).sum(1).sum(dtype=torch.float64)) for s in range(0, x.shape[0], 1 << 18))
    x_sq_total = float(ranks.all_sum(torch.tensor([x_sq_local], dtype=torch.float64))[0])
    labels, upper, lower = _assign_top2(x, centroids, workers=workers)
    sums, counts = _cluster_sums(x, labels, k, workers=workers)  # this process's rows

    def total_inertia(c: torch.Tensor, g_sums: torch.Tensor, g_counts: torch.Tensor) -> float:
        c64 = c.double()
        return x_sq_total - 2.0 * float((c64 * g_sums).sum()) + float((g_counts * (c64 * c64).sum(1)).sum())

    prev = math.inf
    n_iter = 0
    for it in range(1, max_iter + 1):
        g_sums, g_counts = ranks.all_sum(sums, counts)
        cur = total_inertia(centroids, g_sums, g_counts)  # labels are exact for these centroids
        n_iter = it
        if verbose:
            log.info("k-means iter %d: inertia %.6g (%.1fs)", it, cur, time.perf_counter() - t0)
        if prev - cur <= tol * cur:
            break  # the last update changed the inertia by < tol (relative)
        prev = cur
        new = (g_sums / g_counts.clamp_min(1.0)[:, None]).float()
        empty = torch.nonzero(g_counts == 0).flatten()
        if len(empty):
            # Re-seed empty clusters on the points farthest (by their upper bound) from their centroid.
            far = ranks.farthest(upper, x, len(empty))
            new[empty[: len(far)]] = far.to(dev, torch.float32)
            if ranks.rank == 0:
                log.info("k-means: re-seeded %d empty cluster(s) from far points", len(empty))
        delta = (new - centroids).norm(dim=1)
        centroids = new
        upper += delta[labels]
        if k >= 2:
            top = delta.topk(2)
            # A point's lower bound drops by the largest move among the *other* centroids.
            lower -= torch.where(labels == top.indices[0], top.values[1], top.values[0])
            cc = torch.cdist(centroids, centroids).fill_diagonal_(math.inf)
            half_sep = cc.min(1).values / 2
            bound = torch.maximum(lower, half_sep[labels])
        else:
            bound = torch.full_like(upper, math.inf)
        cand = torch.nonzero(upper > bound).flatten()
        if len(cand) == 0:
            continue
        xc = x[cand.to(x.device)].to(dev, torch.float32)
        # Tighten the upper bound exactly (cheap: one centroid per point) before the full search.
        upper[cand] = (xc - centroids[labels[cand]]).norm(dim=1)
        keep = upper[cand] > bound[cand]
        cand, xc = cand[keep], xc[keep]
        if len(cand) == 0:
            continue
        lab2, up2, low2 = _assign_top2(xc, centroids, workers=workers)
        old = labels[cand]
        moved = lab2 != old
        if bool(moved.any()):
            xm = xc[moved].double()
            sums.index_add_(0, old[moved], -xm)
            sums.index_add_(0, lab2[moved], xm)
            counts.index_add_(0, old[moved], torch.full((len(xm),), -1.0, dtype=torch.float64, device=dev))
            counts.index_add_(0, lab2[moved], torch.ones(len(xm), dtype=torch.float64, device=dev))
        labels[cand], upper[cand], lower[cand] = lab2, up2, low2
    else:
        cur = total_inertia(centroids, *ranks.all_sum(sums, counts))
    return centroids, cur, n_iter


def _minibatch(
    x: torch.Tensor, centroids: torch.Tensor, *, max_iter: int, tol: float, batch_size: int, gen: torch.Generator, verbose: bool
) -> tuple[torch.Tensor, int]:
    """Mini-batch k-means (Sculley 2010): each batch moves its centroids by 1/count-weighted means."""
    n = x.shape[0]
    k, dim = centroids.shape
    dev = centroids.device
    counts = torch.zeros(k, dtype=torch.float64, device=dev)
    steps_per_epoch = max(1, n // batch_size)
    ewa, best, stale = None, math.inf, 0
    for epoch in range(1, max_iter + 1):
        perm = torch.randperm(n, generator=gen)
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size].to(x.device)
            xb = x[idx].to(dev, torch.float32)
            lab, dist = assign(xb, centroids)
            sums = torch.zeros(k, dim, dtype=torch.float64, device=dev).index_add_(0, lab, xb.double())
            bc = torch.bincount(lab, minlength=k).double()
            hit = bc > 0
            counts[hit] += bc[hit]
            # new = old + (sum - bc*old) / total_count: the running mean of every point seen so far
            c64 = centroids.double()
            c64[hit] += (sums[hit] - bc[hit, None] * c64[hit]) / counts[hit, None]
            centroids = c64.float()
            batch_inertia = float(dist.double().mean())
            ewa = batch_inertia if ewa is None else 0.99 * ewa + 0.01 * batch_inertia
            if ewa < best * (1 - tol):
                best, stale = ewa, 0
            else:
                stale += 1
        if verbose:
            log.info("mini-batch k-means epoch %d: smoothed inertia/frame %.6g", epoch, ewa)
        if stale >= 10 * steps_per_epoch or stale >= 100:
            return centroids, epoch
    return centroids, max_iter


# ------------------------------------------------------------------ feature dirs


def sample_frames(
    feat_dir: Path,
    *,
    sample_frac: float = 1.0,
    max_frames: int = 2_000_000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[np.ndarray, dict]:
    """Seeded sample of frames from a feature dir, read memory-mapped (never the whole corpus).

    A fraction ``sample_frac`` of the utterances (at least one) is drawn, then, if their
    frames exceed ``max_frames``, ``max_frames`` of those frames are drawn uniformly
    without replacement. The sample is in data-dir order. Returns (frames (n, dim) float32,
    the store's meta plus ``sampled_frames``: the size of the whole sample).

    With ``world_size`` > 1, only block ``rank`` of the sample is read and returned: the
    sample is split into ``world_size`` contiguous blocks (sizes differ by at most one), so
    each process reads a contiguous run of utterances, and the blocks of ranks 0, 1, ...
    concatenated are exactly the one-process sample (the draws do not depend on the split).
    """
    from sslseq.features.store import FeatureStore, shard_bounds

    if not 0.0 < sample_frac <= 1.0:
        raise SslseqError(f"--sample-frac {sample_frac} must be in (0, 1]")
    if max_frames < 1:
        raise SslseqError(f"--max-frames {max_frames} must be positive")
    store = FeatureStore(feat_dir)
    rng = np.random.default_rng(seed)
    n_utts = len(store)
    if n_utts == 0 or store.num_frames == 0:
        raise SslseqError(f"{feat_dir}: the feature dir holds no frames; check the data dir and rerun the dump")
    # Per-utterance (shard, row offset, length) in data-dir order.
    shard_of = np.concatenate([np.full(len(s.utts), i, np.int64) for i, s in enumerate(store.shards)])
    offsets = np.concatenate([s.offsets for s in store.shards])
    lengths = store.lengths
    n_pick = n_utts if sample_frac >= 1.0 else max(1, int(round(sample_frac * n_utts)))
    picked = np.arange(n_utts) if n_pick == n_utts else np.sort(rng.choice(n_utts, n_pick, replace=False))
    picked = picked[lengths[picked] > 0]
    p_len = lengths[picked]
    total = int(p_len.sum())
    if total == 0:
        raise SslseqError(f"{feat_dir}: the sampled utterances hold no frames; raise --sample-frac")
    take = min(total, max_frames)
    # Sorted positions of the sampled frames in the concatenation of the picked utterances.
    frame_idx = None if take == total else _sample_without_replacement(rng, total, take)
    starts = np.concatenate([[0], np.cumsum(p_len)[:-1]])
    lo, hi = shard_bounds(take, world_size, rank)
    out = np.empty((hi - lo, store.dim), np.float32)
    block = 1 << 18
    bar = progress(None, desc="sampling frames", total=hi - lo, unit="frame")
    try:
        for b in range(lo, hi, block):
            e = min(hi, b + block)
            g = np.arange(b, e, dtype=np.int64) if frame_idx is None else frame_idx[b:e]
            u = np.searchsorted(starts, g, side="right") - 1  # which picked utterance each frame is in
            shard = shard_of[picked[u]]
            rows = offsets[picked[u]] + (g - starts[u])
            # Rows are sorted, so each shard's rows are one run: gather them from its memmap.
            cuts = np.flatnonzero(np.diff(shard)) + 1
            for run_lo, run_hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(g)]])):
                out[b - lo + run_lo : b - lo + run_hi] = store.shards[shard[run_lo]].frames[rows[run_lo:run_hi]]
            bar.update(e - b)
    finally:
        bar.close()
    return out, {**store.meta, "sampled_frames": take}


def _sample_without_replacement(rng: np.random.Generator, population: int, size: int) -> np.ndarray:
    """Sorted uniform sample of ``size`` distinct ints in [0, population), memory O(size)."""
    if population <= 4 * size:
        return np.sort(rng.choice(population, size, replace=False))
    # Sparse case: draw with replacement, drop duplicates, top up; then trim to ``size`` at random.
    got = np.unique(rng.integers(0, population, size + size // 8 + 16))
    while len(got) < size:
        got = np.unique(np.concatenate([got, rng.integers(0, population, size - len(got) + 16)]))
    return np.sort(rng.choice(got, size, replace=False))


def _start_distributed(device: str) -> tuple[bool, bool, torch.device]:
    """(distributed, whether this call initialised the group, the device) for a fit.

    Distributed when a torch.distributed group of more than one process is initialised, or
    when torchrun's environment says WORLD_SIZE > 1: then the group is initialised here from
    that environment (MASTER_ADDR/PORT, RANK, WORLD_SIZE) with NCCL on CUDA and gloo on the
    CPU, and a CUDA device is this process's LOCAL_RANK.
    """
    import torch.distributed as dist

    dev = resolve_device(device)
    created = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return False, False, dev
        if not dist.is_available():
            raise SslseqError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
        if dev.type == "cuda":
            if dev.index is None:
                dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    elif dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dist.get_world_size() > 1, created, dev


def fit_kmeans_on_features(
    feat_dir: Path,
    model_path: Path,
    *,
    k: int,
    sample_frac: float = 1.0,
    max_frames: int = 2_000_000,
    seed: int = 0,
    device: str = "auto",
    max_iter: int = 100,
    tol: float = 1e-3,
) -> None:
    """Fit k-means on sampled frames of ``feat_dir``; save centroids + metadata to ``model_path`` (safetensors).

    Under torchrun (see ``_start_distributed``) each process reads its block of the sample
    (``sample_frames(rank=, world_size=)``) and the fit all-reduces the cluster statistics;
    the model equals a one-process fit up to float summation order, and rank 0 alone writes it.
    """
    import torch.distributed as dist
    from safetensors.torch import save_file

    feat_dir, model_path = Path(feat_dir), Path(model_path)
    distributed, created, dev = _start_distributed(device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    try:
        frames, meta = sample_frames(
            feat_dir, sample_frac=sample_frac, max_frames=max_frames, seed=seed, rank=rank, world_size=world
        )
        n_frames = int(meta["sampled_frames"])
        if n_frames < k:  # the same on every process: the sample does not depend on the split
            raise SslseqError(
                f"{feat_dir}: only {n_frames} frames sampled for k={k} clusters; raise --sample-frac or lower --k"
            )
        if rank == 0:
            log.info(
                "fitting k-means: k=%d on %d frames x %d dims from %s%s", k, n_frames, frames.shape[1], feat_dir,
                f" ({world} processes)" if world > 1 else "",
            )
        centroids, inert, n_iter = fit_kmeans(
            torch.from_numpy(frames), k, max_iter=max_iter, tol=tol, seed=seed, device=dev, distributed=distributed
        )
        if rank == 0:
            metadata = {
                "k": str(k),
                "dim": str(frames.shape[1]),
                "frame_rate": repr(float(meta["frame_rate"])),
                "feat_type": str(meta.get("type", "")),
                "inertia": repr(inert),
                "n_frames": str(n_frames),
                "n_iter": str(n_iter),
                "seed": str(seed),
                "sample_frac": repr(float(sample_frac)),
                "max_frames": str(max_frames),
                "feat_dir": str(feat_dir),
            }
            with atomic_path(model_path) as tmp:
                save_file({"centroids": centroids.float().contiguous()}, str(tmp), metadata=metadata)
            log.info(
                "wrote %s: k=%d, inertia %.6g (%.4g per frame) after %d iterations",
                model_path, k, inert, inert / n_frames, n_iter,
            )
        if distributed:
            dist.barrier()  # every process returns once the model is in place
    finally:
        if created:
            dist.destroy_process_group()


def load_kmeans(model_path: Path) -> tuple[torch.Tensor, dict]:
    """(centroids (K, D) float32, metadata with k/dim/n_frames as int, frame_rate/inertia as float)."""
    from safetensors import safe_open

    model_path = Path(model_path)
    if not model_path.is_file():
        raise SslseqError(f"k-means model {model_path} not found; run 'sslseq kmeans fit' first")
    try:
        with safe_open(str(model_path), framework="pt") as f:
            raw = dict(f.metadata() or {})
            if "centroids" not in f.keys():
                raise SslseqError(f"{model_path}: no 'centroids' tensor; not a sslseq k-means model (refit it)")
            centroids = f.get_tensor("centroids").float()
    except SslseqError:
        raise
    except Exception as e:  # corrupt or foreign file
        raise SslseqError(f"{model_path}: cannot read k-means model ({e}); refit it with 'sslseq kmeans fit'") from None
    meta: dict = dict(raw)
    for key in ("k", "dim", "n_frames", "n_iter", "seed", "max_frames"):
        if key in raw:
            meta[key] = int(raw[key])
    for key in ("frame_rate", "inertia", "sample_frac"):
        if key in raw:
            meta[key] = float(raw[key])
    if centroids.ndim != 2 or ("k" in meta and centroids.shape[0] != meta["k"]):
        raise SslseqError(f"{model_path}: centroids of shape {tuple(centroids.shape)} disagree with k={meta.get('k')}")
    meta.setdefault("k", centroids.shape[0])
    meta.setdefault("dim", centroids.shape[1])
    return centroids, meta


PART_HEADER = "#sslseq-km-part"


def label_features(
    model_path: Path, feat_dir: Path, out_path: Path, *, device: str = "auto", nj: int = 1, rank: int | None = None
) -> None:
    """Label every frame of ``feat_dir`` with its nearest centroid, optionally as ``nj`` jobs.

    The utterances are split into ``nj`` contiguous blocks in data-dir order: the feature
    dir's own shards when ``nj`` equals its shard count, else an even re-split by utterance.
    With ``rank`` set, only block ``rank`` is labelled, into ``OUT.km.parts/<rank>_<nj>.km``
    (atomically; skipped when that part is already there for this model and these features).
    Without ``rank``, every missing or stale part is labelled here, then the parts are joined
    into ``out_path`` (one line of space-separated cluster ids per utterance, data-dir
    order) beside ``<set>.utts`` (the utterance ids, same order), ``dict.km.txt`` (fairseq
    dictionary) and ``labels.yaml`` (label_rate, k, dim, and the size and SHA-256 of each set's
    ``.km`` and ``.utts`` under ``files``), all written atomically, and the
    parts are removed. A part starts with a header line holding a fingerprint of the model,
    the feature dir and the split, so parts of another run are never joined.
    """
    from sslseq.features.store import FeatureStore, shard_bounds

    model_path, feat_dir, out_path = Path(model_path), Path(feat_dir), Path(out_path)
    if nj < 1:
        raise SslseqError(f"--nj {nj} must be at least 1")
    if rank is not None and not 0 <= rank < nj:
        raise SslseqError(f"--rank {rank} is outside 0..{nj - 1} (--nj {nj})")
    centroids, meta = load_kmeans(model_path)
    store = FeatureStore(feat_dir)
    k, dim = centroids.shape
    if store.dim != dim:
        raise SslseqError(
            f"feature dim {store.dim} of {feat_dir} differs from k-means model dim {dim} of {model_path}; "
            "label with a model fitted on the same feature type"
        )
    label_rate = store.frame_rate
    if "frame_rate" in meta and not math.isclose(meta["frame_rate"], label_rate, rel_tol=1e-6):
        log.warning("%s was fitted on %g Hz features but %s is %g Hz", model_path, meta["frame_rate"], feat_dir, label_rate)
    labels_meta = {"label_rate": float(label_rate), "k": int(k), "dim": int(dim)}
    meta_path = out_path.parent / LABELS_META
    old: dict = {}
    if meta_path.is_file():
        old = yaml.safe_load(meta_path.read_text()) or {}
        if float(old.get("label_rate", -1)) != labels_meta["label_rate"] or int(old.get("k", -1)) != k:
            raise SslseqError(
                f"{meta_path} says label_rate={old.get('label_rate')}, k={old.get('k')} but {model_path} on {feat_dir} "
                f"gives label_rate={label_rate}, k={k}; write these labels to another dir or delete the old ones"
            )

    # Utterance blocks [lo, hi) of the jobs.
    if nj == store.nj:
        ends = np.cumsum([len(sh.utts) for sh in store.shards]).tolist()
        blocks = list(zip([0] + ends[:-1], ends))
    else:
        blocks = [shard_bounds(len(store), nj, r) for r in range(nj)]
    parts_dir = out_path.parent / f"{out_path.name}.parts"
    source = _label_source_id(centroids, store)
    part_of = {r: parts_dir / f"{r}_{nj}.km" for r in range(nj)}

    def header(r: int) -> str:
        lo, hi = blocks[r]
        return f"{PART_HEADER} {source} block={r}/{nj} utts={lo}:{hi}\n"

    def done(r: int) -> bool:
        try:
            with open(part_of[r], encoding="utf-8") as f:
                return f.readline() == header(r)
        except FileNotFoundError:
            return False

    dev = resolve_device(device)
    c = centroids.to(dev)
    todo = [rank] if rank is not None else list(range(nj))
    redone = 0
    for r in todo:
        if done(r):
            if rank is not None:
                log.info("%s is already labelled with this model; skipping it", part_of[r])
            continue
        _label_block(store, c, *blocks[r], part_of[r], header(r))
        redone += 1
    if rank is not None:
        return
    if nj > 1:
        log.info("joining %d parts of %s (%d labelled by the jobs, %d here)", nj, out_path.name, nj - redone, redone)

    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in range(nj):
            with open(part_of[r], encoding="utf-8") as part:
                if part.readline() != header(r):  # replaced under us by another run
                    raise SslseqError(f"{part_of[r]} changed while joining the parts; rerun 'sslseq kmeans label'")
                while buf := part.read(1 << 20):
                    f.write(buf)
    utts_path = out_path.with_suffix(".utts")
    atomic_write_text(utts_path, "".join(f"{u}\n" for u in store.utts))
    atomic_write_text(out_path.parent / DICT_NAME, "".join(f"{i} 1\n" for i in range(k)))
    # The size and checksum of each set's files (other sets' entries kept), checked by their readers.
    kept = old.get(LABELS_FILES) if isinstance(old.get(LABELS_FILES), dict) else {}
    files = {n: r for n, r in kept.items() if n not in (out_path.name, utts_path.name)}
    files.update({p.name: file_record(p) for p in (out_path, utts_path)})
    labels_meta[LABELS_FILES] = dict(sorted(files.items()))
    atomic_write_text(meta_path, yaml.safe_dump(labels_meta, sort_keys=False))
    for path in part_of.values():
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        parts_dir.rmdir()  # left in place if it holds parts of another --nj
    log.info("wrote %s (%d utterances, %d frames, k=%d, %g labels/s)", out_path, len(store), store.num_frames, k, label_rate)


def _label_source_id(centroids: torch.Tensor, store) -> str:
    """Fingerprint of what labels are made from: the centroids and the feature files (meta, sizes, times)."""
    from sslseq.features.store import shard_name

    h = hashlib.sha256(centroids.float().contiguous().numpy().tobytes())
    h.update(yaml.safe_dump(store.meta, sort_keys=True).encode())
    for r in range(store.nj):
        for ext in ("npy", "len", "utts"):
            path = store.dir / f"{shard_name(r, store.nj)}.{ext}"
            st = path.stat()
            h.update(f"{path.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _label_block(store, centroids: torch.Tensor, lo: int, hi: int, part_path: Path, header: str) -> None:
    """Label utterances [lo, hi) (data-dir order) of ``store`` into ``part_path`` (atomically), after ``header``."""
    step = 1 << 16
    first = 0  # data-dir index of the current shard's first utterance
    spans = []  # (shard, its first and last+1 utterance in the block)
    for shard in store.shards:
        a, b = max(lo, first) - first, min(hi, first + len(shard.utts)) - first
        if a < b:
            spans.append((shard, a, b))
        first += len(shard.utts)
    n_frames = sum(int(sh.lengths[a:b].sum()) for sh, a, b in spans)
    bar = progress(None, desc=f"labelling {part_path.name}", total=n_frames, unit="frame")
    try:
        with atomic_path(part_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(header)
            for shard, a, b in spans:
                f0 = int(shard.offsets[a])
                f1 = int(shard.offsets[b - 1] + shard.lengths[b - 1])
                lab = np.empty(f1 - f0, np.int64)
                for s in range(f0, f1, step):
                    e = min(f1, s + step)
                    xb = torch.from_numpy(np.array(shard.frames[s:e], dtype=np.float32))  # copy: memmaps are read-only
                    lab[s - f0 : e - f0] = assign(xb, centroids, need_dist=False)[0].cpu().numpy()
                    bar.update(e - s)
                for off, ln in zip(shard.offsets[a:b] - f0, shard.lengths[a:b]):
                    f.write(" ".join(map(str, lab[off : off + ln].tolist())))
                    f.write("\n")
    finally:
        bar.close()
