"""The sharded feature store (fairseq simple_kmeans layout).

A feature dir for one data set holds, for each shard ``<rank>_<nj>``:
  ``<rank>_<nj>.npy``   float32 (frames, dim): the frames of its utterances, concatenated
  ``<rank>_<nj>.len``   one frame count per line
  ``<rank>_<nj>.utts``  one utterance id per line, same order
  ``<rank>_<nj>.sums``  ``<bytes> <sha256> <file>`` of the three files above, one line each
and ``feats.yaml`` (type, dim, frame_rate, nj). Shards split the data dir's sorted utterance
list into ``nj`` contiguous blocks, so shard order is data-dir order. The ``.npy`` is written
last (atomically, after ``.sums``), so its presence means the shard is complete. Readers check
every shard file's size against ``.sums`` (and the ``.npy``'s size against its own header, for
stores written before ``.sums`` existed); ``check_complete(verify=True)`` (``sslseq feats
check``) also checks the SHA-256s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import yaml

from sslseq.utils import SslseqError, atomic_path, atomic_write_text, file_sha256, get_logger, read_yaml_mapping

log = get_logger(__name__)

META = "feats.yaml"
SHARD_FILES = ("utts", "len", "npy")
SUMS = "sums"  # <name>.sums: the size and SHA-256 of each shard file, written with them


def shard_bounds(num_items: int, nj: int, rank: int) -> tuple[int, int]:
    """[start, end) of shard ``rank`` when ``num_items`` are split into ``nj`` contiguous blocks."""
    check_job(nj, rank)
    base, extra = divmod(num_items, nj)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_name(rank: int, nj: int) -> str:
    return f"{rank}_{nj}"


def check_job(nj: int, rank: int | None) -> None:
    """A one-line error for an ``--nj`` / ``--rank`` pair no job can have (before any work)."""
    if nj < 1:
        raise SslseqError(f"--nj {nj}: must be at least 1")
    if rank is not None and not 0 <= rank < nj:
        raise SslseqError(f"--rank {rank} is outside 0..{nj - 1} (--nj {nj})")


def blocks_to_do(nj: int, rank: int | None, done: Callable[[int], bool], what: str) -> tuple[list[int], list[int]]:
    """The one pattern of sslseq's ``--nj`` verbs (``feats dump``, ``kmeans label``, ``decode``):
    their utterances are cut into ``nj`` contiguous blocks (``shard_bounds``); a call with
    ``--rank R`` (a job) works on block R alone, the call without one on every block, and then
    joins them where the verb has parts to join. Returns this call's blocks and those of them
    still to do: ``done(r)`` says whether block r's files on disk are complete and hold the
    fingerprint of these same inputs; a block that is done is logged and skipped."""
    check_job(nj, rank)
    ranks = list(range(nj)) if rank is None else [rank]
    todo = []
    for r in ranks:
        if done(r):
            log.info("%s: block %s is already done with these inputs; skipping it", what, shard_name(r, nj))
        else:
            todo.append(r)
    return ranks, todo


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


def _redo_hint(feat_dir: Path) -> str:
    return (f"dump it again: rerun the recipe's stage 2 (its done check notices and redoes it) or "
            f"'sslseq feats dump ... {feat_dir}' (which rewrites damaged shards)")


def write_shard(feat_dir: Path, rank: int, nj: int, utts: list[str], feats: list[np.ndarray]) -> None:
    """Write one complete shard; the .npy goes last so it marks completeness, its size and
    checksum (with those of .utts and .len) in .sums just before it."""
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
        sums = {ext: (feat_dir / f"{name}.{ext}") for ext in ("utts", "len")}
        lines = [f"{p.stat().st_size} {file_sha256(p)} {p.name}\n" for p in sums.values()]
        lines.append(f"{tmp.stat().st_size} {file_sha256(tmp)} {name}.npy\n")
        atomic_write_text(feat_dir / f"{name}.{SUMS}", "".join(lines))


def read_sums(feat_dir: Path, rank: int, nj: int) -> dict[str, tuple[int, str]] | None:
    """file name -> (bytes, sha256) from ``<name>.sums``; None for a shard written without one."""
    path = Path(feat_dir) / f"{shard_name(rank, nj)}.{SUMS}"
    if not path.is_file():
        return None
    out: dict[str, tuple[int, str]] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or not parts[0].isdigit():
            raise SslseqError(f"{path}:{no}: expected '<bytes> <sha256> <file>', got {line[:60]!r}; "
                              f"{_redo_hint(Path(feat_dir))}")
        out[parts[2]] = (int(parts[0]), parts[1])
    return out


def _npy_data_bytes(path: Path) -> tuple[int, tuple[int, ...]] | None:
    """(the file size the .npy header implies, its shape), or None when the header is unreadable."""
    from numpy.lib import format as npy_format

    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version not in readers:
                return None
            shape, _, dtype = readers[version](f)
            header_end = f.tell()
    except (ValueError, OSError, EOFError):
        return None
    return header_end + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, tuple(shape)


def shard_problem(feat_dir: Path, rank: int, nj: int, *, checksum: bool = False) -> str | None:
    """Why shard ``rank`` of ``feat_dir`` is not complete and intact (None: it is): a missing
    file, a size other than the one written (always checked), or, with ``checksum``, other
    content. Each reason names the file."""
    feat_dir = Path(feat_dir)
    name = shard_name(rank, nj)
    paths = {ext: feat_dir / f"{name}.{ext}" for ext in SHARD_FILES}
    if not paths["npy"].is_file():
        return f"{paths['npy']}: missing (the shard was not completed, or was deleted)"
    for p in paths.values():
        if not p.is_file():
            return f"{p}: missing"
    sums = read_sums(feat_dir, rank, nj)
    if sums is not None:
        for ext, p in paths.items():
            if p.name not in sums:
                return f"{feat_dir / f'{name}.{SUMS}'}: does not list {p.name}"
            size, digest = sums[p.name]
            have = p.stat().st_size
            if have != size:
                return f"{p}: {have} bytes, but {size} were written (the file is {'cut short' if have < size else 'longer'})"
            if checksum and file_sha256(p) != digest:
                return f"{p}: its SHA-256 differs from the one in {name}.{SUMS} (the content was changed after it was written)"
    implied = _npy_data_bytes(paths["npy"])
    have = paths["npy"].stat().st_size
    if implied is None:
        return f"{paths['npy']}: not a readable .npy file (no valid header of format 1.0 or 2.0)"
    if have != implied[0]:
        return (f"{paths['npy']}: {have} bytes, but its header (shape {implied[1]}) needs {implied[0]} "
                f"(the file is {'cut short' if have < implied[0] else 'longer'})")
    return None


def shard_complete(feat_dir: Path, rank: int, nj: int) -> bool:
    """Whether the shard is all there with the sizes it was written with (a dump skips it)."""
    return shard_problem(feat_dir, rank, nj) is None


def check_complete(feat_dir: Path, nj: int, *, verify: bool = False) -> None:
    """Every shard of ``nj`` is complete with its written sizes (and, with ``verify``, checksums)."""
    feat_dir = Path(feat_dir)
    problems = [(r, p) for r in range(nj) if (p := shard_problem(feat_dir, r, nj, checksum=verify))]
    if problems:
        more = f" (and {len(problems) - 1} more of the {nj} shards)" if len(problems) > 1 else ""
        raise SslseqError(f"{problems[0][1]}{more}; {_redo_hint(feat_dir)}")
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
            try:
                frames = np.load(self.dir / f"{name}.npy", mmap_mode="r")
            except (ValueError, OSError) as e:  # check_complete saw the sizes: something odd in the file
                raise SslseqError(f"{self.dir}/{name}.npy: cannot be read ({e}); {_redo_hint(self.dir)}") from None
            if len(lengths) != len(utts) or int(lengths.sum()) != frames.shape[0]:
                raise SslseqError(
                    f"{self.dir}/{name}: .utts/.len/.npy disagree ({len(utts)} utts, {len(lengths)} lengths, "
                    f"{int(lengths.sum())} vs {frames.shape[0]} frames); {_redo_hint(self.dir)}"
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
