"""The k-means verbs' work on feature dirs: ``kmeans fit`` (sampled frames, one process or
torchrun) and ``kmeans label`` (every utterance, in blocks that jobs can share: a part per
block with the fingerprint of the model and the features, then one join into the label dir)."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import yaml

from sslseq.cluster.kmeans import assign, fit_kmeans
from sslseq.cluster.model_file import load_kmeans, save_kmeans
from sslseq.cluster.sampling import sample_frames
from sslseq.data.labels import check_label_dir_accepts, finish_label_set
from sslseq.hw import resolve_device
from sslseq.utils import SslseqError, atomic_path, file_stamp, fingerprint, get_logger, progress

log = get_logger("sslseq.cluster.kmeans")


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
            save_kmeans(model_path, centroids, metadata)
            log.info(
                "wrote %s: k=%d, inertia %.6g (%.4g per frame) after %d iterations",
                model_path, k, inert, inert / n_frames, n_iter,
            )
        if distributed:
            dist.barrier()  # every process returns once the model is in place
    finally:
        if created:
            dist.destroy_process_group()


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
    from sslseq.features.store import FeatureStore, blocks_to_do, check_job, shard_bounds

    model_path, feat_dir, out_path = Path(model_path), Path(feat_dir), Path(out_path)
    check_job(nj, rank)
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
    check_label_dir_accepts(out_path.parent, float(label_rate), int(k), f"{model_path} on {feat_dir}")

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
    _, todo = blocks_to_do(nj, rank, done, str(parts_dir))
    for r in todo:
        _label_block(store, c, *blocks[r], part_of[r], header(r))
    if rank is not None:
        return
    if nj > 1:
        log.info("joining %d parts of %s (%d labelled by the jobs, %d here)", nj, out_path.name, nj - len(todo), len(todo))

    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in range(nj):
            with open(part_of[r], encoding="utf-8") as part:
                if part.readline() != header(r):  # replaced under us by another run
                    raise SslseqError(f"{part_of[r]} changed while joining the parts; rerun 'sslseq kmeans label'")
                while buf := part.read(1 << 20):
                    f.write(buf)
    finish_label_set(out_path, store.utts, label_rate=float(label_rate), k=int(k), dim=int(dim))
    for path in part_of.values():
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        parts_dir.rmdir()  # left in place if it holds parts of another --nj
    log.info("wrote %s (%d utterances, %d frames, k=%d, %g labels/s)", out_path, len(store), store.num_frames, k, label_rate)


def _label_source_id(centroids: torch.Tensor, store) -> str:
    """Fingerprint of what labels are made from: the centroids and the feature files (meta, sizes, times)."""
    from sslseq.features.store import shard_name

    stamps = [file_stamp(store.dir / f"{shard_name(r, store.nj)}.{ext}")
              for r in range(store.nj) for ext in ("npy", "len", "utts")]
    return fingerprint(centroids.float().contiguous().numpy().tobytes(),
                       yaml.safe_dump(store.meta, sort_keys=True), *stamps)


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
