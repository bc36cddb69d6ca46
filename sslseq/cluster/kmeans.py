"""Offline k-means for HuBERT-style targets: the algorithm, on tensors (the feature-dir jobs
that use it are ``cluster/jobs.py``, the model file ``cluster/model_file.py``).

The core is plain torch (CPU, or CUDA when present). Distances are computed in row
chunks as ``||c||^2 - 2 x.c`` (``||x||^2`` is constant per row), so memory is at most
``chunk x K`` and the work is one float32 matmul plus an argmin per chunk. The fit is
k-means++ on a subsample, Lloyd on a larger subsample, then Lloyd on all points; Lloyd
keeps distance bounds (Yinyang k-means' group bounds) so that only points that may change
cluster are recomputed. This reaches a lower inertia than mini-batch k-means at a fraction of its cost.

Under torchrun (or any initialised torch.distributed group) the fit is data-parallel: each
process holds one contiguous block of the sample, and every Lloyd iteration all-reduces the
per-cluster sums and counts, so all processes hold the same centroids. One process is the
world-size-1 case of the same code.
"""

from __future__ import annotations

import contextlib
import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from sslseq.cluster.ranks import Ranks
from sslseq.hw import resolve_device
from sslseq.utils import SslseqError, get_logger

log = get_logger("sslseq.cluster.kmeans")

CHUNK = 1024


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
    ranks = Ranks(x.shape[0], distributed=distributed, device=dev)
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
        # k-means++ is k steps of a few large ops each: torch's own threads split them well
        # (the row-parallel passes below run torch single-threaded instead).
        with _torch_threads(workers if dev.type == "cpu" else None):
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


GROUPS = 32  # centroid groups of the Lloyd bounds (Yinyang k-means); a point keeps one lower bound per group


def _groups(k: int) -> tuple[int, int]:
    """(groups, centroids per group): consecutive centroid indices, the last group padded."""
    g = min(GROUPS, k)
    return g, math.ceil(k / g)


def _assign_grouped(x: torch.Tensor, centroids: torch.Tensor, chunk: int | None = None, workers: int = 1):
    """(nearest index, distance to it, (N, G) distance to the nearest other centroid of each
    group) per row; plain (not squared) distances, groups as ``_groups``."""
    k, dim = centroids.shape
    device = centroids.device
    g, size = _groups(k)
    chunk = chunk or _chunk_rows(g * size, device)
    # Column slot * g + group holds centroid group * size + slot, so that a group's minimum is an
    # elementwise min over `size` rows of g contiguous values (a short reduction over each group's
    # own columns is 3x slower on the CPU). Padding centroids at infinite distance fill the last group.
    idx = torch.arange(k, device=device)
    grp, slot = idx // size, idx % size
    c_sq = torch.full((size, g), math.inf, device=device)
    c_sq[slot, grp] = (centroids * centroids).sum(1)
    c_t = torch.zeros(dim, size, g, device=device)
    c_t[:, slot, grp] = centroids.t()
    c_sq, c_t = c_sq.flatten(), c_t.reshape(dim, size * g)
    n = x.shape[0]
    labels = torch.empty(n, dtype=torch.int64, device=device)
    d1 = torch.empty(n, dtype=torch.float32, device=device)
    lower = torch.empty(n, g, dtype=torch.float32, device=device)

    def body(lo: int, hi: int) -> None:
        for s in range(lo, hi, chunk):
            e = min(hi, s + chunk)
            xb = x[s:e].to(device, torch.float32)
            d = torch.addmm(c_sq, xb, c_t, alpha=-2.0).view(e - s, size, g)
            x_sq = (xb * xb).sum(1, keepdim=True)
            group_min = d.amin(1)
            # the nearest group (its first among ties), then its nearest centroid (first among
            # ties): the lowest centroid index among equal distances, as one min over all of them
            m1, gi = group_min.min(1)
            own = d.gather(2, gi.view(-1, 1, 1).expand(-1, size, 1)).squeeze(2)
            _, j = own.min(1)
            labels[s:e] = gi * size + j
            # the nearest centroid is not "another" one: its group's bound is the group's second smallest
            group_min.scatter_(1, gi[:, None], own.scatter_(1, j[:, None], math.inf).amin(1, keepdim=True))
            d1[s:e] = (m1 + x_sq[:, 0]).clamp_min_(0.0).sqrt_()
            lower[s:e] = group_min.add_(x_sq).clamp_min_(0.0).sqrt_()

    with _float32(device):
        _row_parallel(n, chunk, workers, body)
    return labels, d1, lower


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
    ranks: Ranks | None = None,
):
    """Full-batch Lloyd with Yinyang k-means' group bounds (exact: same iterates as plain Lloyd).

    Each point keeps an upper bound ``u`` on the distance to its centroid and, for each of
    ``GROUPS`` groups of centroids, a lower bound ``l_g`` on the distance to any other centroid
    of the group; when centroids move by ``delta``, ``u += delta[a]`` and ``l_g -= max delta``
    over group g. Only points with ``u > max(min_g l_g, s[a])`` (``s``: half the distance to the
    nearest other centroid) can change cluster and get their distances recomputed. A few
    centroids move much more than the rest, so one bound per group (rather than Hamerly's one
    bound lowered by the largest move of all) keeps most points out of the search: on 1M MFCC
    frames with K=500, about 3x fewer distance computations per iteration. Cluster sums are updated incrementally from
    the points that moved, and the inertia comes from the sums in O(K D):
    sum ||x - c_a||^2 = sum ||x||^2 - 2 sum_j c_j . S_j + sum_j n_j ||c_j||^2.

    Across processes (``ranks``): labels, bounds and the sums/counts of this process's rows
    are local; each iteration all-reduces the sums and counts (one K x (D+1) float64 message),
    from which every process computes the same inertia, stopping test and centroids.
    """
    ranks = ranks or Ranks(x.shape[0], distributed=False, device=centroids.device)
    k = centroids.shape[0]
    dev = centroids.device
    # Row norms in float32 (each ~1e-7 relative), summed in float64: ample for a relative tol >= 1e-6.
    x_sq_local = sum(float(x[s : s + (1 << 18)].pow(2).sum(1).sum(dtype=torch.float64)) for s in range(0, x.shape[0], 1 << 18))
    x_sq_total = float(ranks.all_sum(torch.tensor([x_sq_local], dtype=torch.float64))[0])
    labels, upper, lower = _assign_grouped(x, centroids, workers=workers)
    n_groups, group_size = _groups(k)
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
        # The bound updates are a few passes over (points, groups) arrays: torch's own threads
        # split them (the distance passes split rows over the workers instead).
        with _torch_threads(workers if dev.type == "cpu" else None):
            delta = (new - centroids).norm(dim=1)
            centroids = new
            upper += delta[labels]
            if k >= 2:
                # Each group's bound drops by the largest move in the group (the point's own centroid
                # included: a looser bound, still a bound).
                pad = torch.zeros(n_groups * group_size, device=dev)
                pad[:k] = delta
                lower -= pad.view(n_groups, group_size).amax(1)
                cc = torch.cdist(centroids, centroids).fill_diagonal_(math.inf)
                half_sep = cc.min(1).values / 2
                bound = torch.maximum(lower.amin(1), half_sep[labels])
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
        lab2, up2, low2 = _assign_grouped(xc, centroids, workers=workers)
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
