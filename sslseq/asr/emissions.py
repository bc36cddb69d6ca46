"""The emissions cache of a decode dir: the CTC log-probs of every utterance, computed once.

``sslseq decode`` writes ``OUT/emissions/`` as a feature store (``sslseq.features.store``:
``<rank>_<nj>.{utts,len,npy}``, float32 (frames, units)) plus, per block, ``<rank>_<nj>.id``:
the fingerprint of the model and data the block was computed from, and the audio and network
seconds it took. The ``.id`` is written after the ``.npy`` and removed before it is rewritten,
so a block is current exactly when its ``.id`` holds today's fingerprint. Greedy decoding,
LM tuning and LM decoding read the cache; only a changed model or data dir reruns the network.
``feats.yaml`` (written by the joining call, once every block is current) names the fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from sslseq.utils import SslseqError, atomic_write_text, file_stamp, fingerprint

DIR = "emissions"
KIND = "ctc_log_probs"


def model_data_id(exp_dir: Path, data_dir: Path) -> str:
    """What the emissions depend on: the model's files (size, mtime) and the data dir's ``wav.scp``."""
    from sslseq.models.exp_dir import BPE_MODEL, CONFIG, UNITS, WEIGHTS

    exp_dir, data_dir = Path(exp_dir), Path(data_dir)
    stamps = [file_stamp(path) for path in (exp_dir / WEIGHTS, exp_dir / UNITS, exp_dir / BPE_MODEL, exp_dir / CONFIG)
              if path.is_file()]
    wav_scp = data_dir / "wav.scp"
    if not wav_scp.is_file():
        raise SslseqError(f"{wav_scp}: not found; {data_dir} is not a data dir")
    return fingerprint(*stamps, wav_scp.read_bytes())


def _paths(cache_dir: Path, rank: int, nj: int) -> dict[str, Path]:
    from sslseq.features.store import shard_name

    name = shard_name(rank, nj)
    return {ext: Path(cache_dir) / f"{name}.{ext}" for ext in ("utts", "len", "npy", "id")}


def block_info(cache_dir: Path, rank: int, nj: int, model_data: str) -> dict | None:
    """The block's ``.id`` content when it is complete, intact (the sizes its ``.sums`` holds)
    and computed from ``model_data``, else None (decode computes it again)."""
    from sslseq.features.store import shard_problem

    p = _paths(cache_dir, rank, nj)
    if not p["id"].is_file() or shard_problem(Path(cache_dir), rank, nj) is not None:
        return None
    info = yaml.safe_load(p["id"].read_text()) or {}
    return info if info.get("id") == model_data else None


def write_block(cache_dir: Path, rank: int, nj: int, model_data: str, utts: list[str], log_probs: list[np.ndarray],
                *, audio_seconds: float, network_seconds: float) -> None:
    """Write one block's emissions (``log_probs[i]``: (frames, units) of ``utts[i]``), the ``.id`` last."""
    from sslseq.features.store import write_shard

    p = _paths(cache_dir, rank, nj)
    p["id"].unlink(missing_ok=True)  # until the new .id is written, the block is not current
    write_shard(Path(cache_dir), rank, nj, utts, [np.asarray(x, dtype=np.float32) for x in log_probs])
    info = {"id": model_data, "utts": len(utts), "audio_seconds": round(float(audio_seconds), 3),
            "network_seconds": round(float(network_seconds), 3)}
    atomic_write_text(p["id"], yaml.safe_dump(info, sort_keys=False))


def read_block(cache_dir: Path, rank: int, nj: int) -> dict[str, np.ndarray]:
    """utt -> (frames, units) float32 of one block."""
    p = _paths(cache_dir, rank, nj)
    utts = p["utts"].read_text().split()
    lens = np.loadtxt(p["len"], dtype=np.int64, ndmin=1) if utts else np.zeros(0, np.int64)
    frames = np.load(p["npy"])
    if len(lens) != len(utts) or int(lens.sum()) != frames.shape[0]:
        raise SslseqError(f"{p['npy']}: .utts/.len/.npy disagree; delete {cache_dir} and rerun 'sslseq decode'")
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return {u: frames[offsets[i] : offsets[i + 1]] for i, u in enumerate(utts)}


def finish(cache_dir: Path, nj: int, model_data: str, num_units: int, frame_rate: float) -> None:
    """Record that every block of ``nj`` is current (``feats.yaml``), once they all are."""
    from sslseq.features.store import write_meta

    write_meta(Path(cache_dir), feat_type=KIND, dim=num_units, frame_rate=frame_rate, nj=nj, id=model_data)


def load(decode_dir: Path, exp_dir: Path, data_dir: Path) -> dict[str, np.ndarray]:
    """Every utterance's emissions from ``decode_dir/emissions``, checked to be current for the
    model in ``exp_dir`` and the data in ``data_dir``; an error (rerun decode) otherwise."""
    from sslseq.features.store import read_meta

    cache_dir = Path(decode_dir) / DIR
    hint = f"run 'sslseq decode {exp_dir} {data_dir} {decode_dir}' first (it writes them)"
    if not (cache_dir / "feats.yaml").is_file():
        raise SslseqError(f"{cache_dir}: no emissions cache; {hint}")
    meta = read_meta(cache_dir)
    model_data = model_data_id(exp_dir, data_dir)
    if meta.get("type") != KIND or meta.get("id") != model_data:
        raise SslseqError(f"{cache_dir}: the emissions are of another model or data dir than {exp_dir} / {data_dir}; {hint}")
    nj = int(meta["nj"])
    out: dict[str, np.ndarray] = {}
    for r in range(nj):
        if block_info(cache_dir, r, nj, model_data) is None:
            from sslseq.features.store import shard_problem

            why = shard_problem(cache_dir, r, nj) or f"{cache_dir}: block {r} of {nj} is missing or stale"
            raise SslseqError(f"{why}; {hint}")
        out.update(read_block(cache_dir, r, nj))
    return out
