"""The sharded feature store (fairseq simple_kmeans layout).

A feature dir for one data set holds, for each shard ``<rank>_<nj>``:
  ``<rank>_<nj>.npy``   float32 (frames, dim): the frames of its utterances, concatenated
  ``<rank>_<nj>.len``   one frame count per line
  ``<rank>_<nj>.utts``  one utterance id per line, same order
and ``feats.yaml`` (type, dim, frame_rate, nj). Shards split the data dir's sorted utterance
list into ``nj`` contiguous blocks, so shard order is data-dir order. The ``.npy`` is written
last (atomically), so its presence means the shard is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from sslseq.utils import SslseqError, atomic_path, atomic_write_text, read_yaml_mapping

META = "feats.yaml"


def shard_bounds(num_items: int, nj: int, rank: int) -> tuple[int, int]:
    """[start, end) of shard ``rank`` when ``num_items`` are split into ``nj`` contiguous blocks."""
    if not 0 <= rank < nj:
        raise SslseqError(f"rank {rank} is outside 0..{nj - 1} (--nj {nj})")
    base, extra = divmod(num_items, nj)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_name(rank: int, nj: int) -> str:
    return f"{rank}_{nj}"


def write_meta(feat_dir: Path, *, feat_type: str, dim: int, frame_rate: float, nj: int, **extra) -> None:
    meta = {"type": feat_type, "dim": int(dim), "frame_rate": float(frame_rate), "nj": int(nj), **extra}
    atomic_write_text(Path(feat_dir) / META, yaml.safe_dump(meta, sort_keys=False))


def read_meta(feat_dir: Path) -> dict:
    path = Path(feat_dir) / META
    if not path.is_file():
        raise SslseqError(f"{path} not found: {feat_dir} is not a feature dir (run 'sslseq feats dump' first)")
    fix = f"the feature dir is damaged or from another tool: dump it again ('sslseq feats dump', recipe stage 2: delete {feat_dir})"
    meta = read_yaml_mapping(path, fix, required=("type", "dim", "frame_rate", "nj"))
    for key, ok in (("nj", lambda v: isinstance(v, int) and v >= 1), ("dim", lambda v: isinstance(v, int) and v >= 0),
                    ("frame_rate", lambda v: isinstance(v, (int, float)) and v > 0)):
        if isinstance(meta[key], bool) or not ok(meta[key]):
            raise SslseqError(f"{path}: '{key}: {meta[key]!r}' is not a valid value; {fix}")
    return meta


def write_shard(feat_dir: Path, rank: int, nj: int, utts: list[str], feats: list[np.ndarray]) -> None:
    """Write one complete shard; the .npy goes last so it marks completeness."""
    feat_dir = Path(feat_dir)
    name = shard_name(rank, nj)
    atomic_write_text(feat_dir / f"{name}.utts", "".join(f"{u}\n" for u in utts))
    atomic_write_text(feat_dir / f"{name}.len", "".join(f"{len(f)}\n" for f in feats))
    if feats:
        array = np.concatenate(feats, axis=0).astype(np.float32, copy=False)
    else:  # an empty shard still has the set's feature dim
        dim = int(read_meta(feat_dir).get("dim", 0)) if (feat_dir / META).exists() else 0
        array = np.zeros((0, dim), np.float32)
    with atomic_path(feat_dir / f"{name}.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def shard_complete(feat_dir: Path, rank: int, nj: int) -> bool:
    name = shard_name(rank, nj)
    return all((Path(feat_dir) / f"{name}.{ext}").is_file() for ext in ("utts", "len", "npy"))


def check_complete(feat_dir: Path, nj: int) -> None:
    missing = [shard_name(r, nj) for r in range(nj) if not shard_complete(feat_dir, r, nj)]
    if missing:
        raise SslseqError(f"{feat_dir}: shard(s) {', '.join(missing)} of {nj} missing or incomplete; rerun the dump")
    read_meta(feat_dir)


@dataclass
class Shard:
    utts: list[str]
    lengths: np.ndarray  # (num_utts,) int64
    offsets: np.ndarray  # (num_utts,) int64: first frame of each utterance in ``frames``
    frames: np.ndarray  # (total_frames, dim) float32, memory-mapped


class FeatureStore:
    """Read a feature dir: utterances in data-dir order, frames memory-mapped (never all in RAM)."""

    def __init__(self, feat_dir: str | Path):
        self.dir = Path(feat_dir)
        self.meta = read_meta(self.dir)
        self.nj = int(self.meta["nj"])
        check_complete(self.dir, self.nj)
        self.shards: list[Shard] = []
        for rank in range(self.nj):
            name = shard_name(rank, self.nj)
            utts = (self.dir / f"{name}.utts").read_text().split()
            lengths = np.loadtxt(self.dir / f"{name}.len", dtype=np.int64, ndmin=1) if utts else np.zeros(0, np.int64)
            frames = np.load(self.dir / f"{name}.npy", mmap_mode="r")
            if len(lengths) != len(utts) or int(lengths.sum()) != frames.shape[0]:
                raise SslseqError(
                    f"{self.dir}/{name}: .utts/.len/.npy disagree ({len(utts)} utts, {len(lengths)} lengths, "
                    f"{int(lengths.sum())} vs {frames.shape[0]} frames); rerun the dump for this shard"
                )
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths
            self.shards.append(Shard(utts, lengths, offsets, frames))
        self.utts = [u for s in self.shards for u in s.utts]
        self.lengths = np.concatenate([s.lengths for s in self.shards]) if self.shards else np.zeros(0, np.int64)

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def frame_rate(self) -> float:
        return float(self.meta["frame_rate"])

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.utts)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """(utt, frames) in data-dir order; frames are memory-mapped views."""
        for s in self.shards:
            for utt, off, n in zip(s.utts, s.offsets, s.lengths):
                yield utt, s.frames[off : off + n]
