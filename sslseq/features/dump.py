"""``sslseq feats dump``: features of a Kaldi data dir into the sharded store.

Each shard ``<rank>_<nj>`` covers a contiguous block of the data dir's sorted utterances.
Within a shard, utterances are batched by length (sorted by duration, about
``batch_seconds`` of padded audio per batch) for the batched torch extractors, and written
in data-dir order. A complete shard is skipped (after checking its files' sizes and checksums:
a damaged one is dumped again), so a killed dump resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sslseq.data.batching import utterance_batches
from sslseq.features import store
from sslseq.hw import resolve_device
from sslseq.utils import SslseqError, atomic_write_text, get_logger, progress

log = get_logger(__name__)

SAMPLE_RATE = 16000
FEAT_TYPES = ("mfcc", "fbank", "layer")


@dataclass
class _Extractor:
    """Turns a padded batch into per-utterance (frames, dim) arrays."""

    feat_type: str
    dim: int
    frame_rate: float
    batch_seconds: float
    fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    device: torch.device
    meta: dict = field(default_factory=dict)

    def __call__(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        lengths = torch.tensor([len(w) for w in waves], dtype=torch.int64)
        batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)
        for i, w in enumerate(waves):
            batch[i, : len(w)] = w
        with torch.inference_mode():
            feats, frame_lens = self.fn(torch.from_numpy(batch).to(self.device), lengths.to(self.device))
            feats = feats.float().cpu().numpy()
        frame_lens = frame_lens.cpu().tolist()
        return [np.ascontiguousarray(feats[i, : int(n)]) for i, n in enumerate(frame_lens)]


def _make_extractor(feat_type: str, device: torch.device, layer_features: Callable | None) -> _Extractor:
    from sslseq.features import kaldi

    if feat_type == "mfcc":
        return _Extractor(
            "mfcc", kaldi.feature_dim("mfcc"), kaldi.frame_rate, 200.0,
            lambda w, n: kaldi.mfcc(w, n, deltas=True), device,
            {"layout": "mfcc13+delta+delta-delta", "kaldi": "compute-mfcc-feats | add-deltas, dither 0"},
        )  # fmt: skip
    if feat_type == "fbank":
        return _Extractor(
            "fbank", kaldi.feature_dim("fbank"), kaldi.frame_rate, 200.0,
            lambda w, n: kaldi.fbank(w, n), device, {"kaldi": "compute-fbank-feats --num-mel-bins=80, dither 0"},
        )  # fmt: skip
    if feat_type != "layer":
        raise SslseqError(f"unknown feature type '{feat_type}' (use one of {', '.join(FEAT_TYPES)})")
    if layer_features is None:
        raise SslseqError("--type layer needs --checkpoint <experiment dir> and --layer <index>")
    lf = layer_features  # sslseq.models.layer_features.LayerFeatures: the CLI loads the model
    return _Extractor("layer", lf.dim, lf.frame_rate, 100.0, lf, lf.device, dict(lf.meta))


def _check_existing_meta(out_dir: Path, ex: _Extractor, nj: int) -> None:
    """Refuse to mix shards of different features (a complete shard would otherwise be 'resumed')."""
    if not (out_dir / store.META).is_file():
        return
    old = store.read_meta(out_dir)
    new = {"type": ex.feat_type, "dim": ex.dim, "nj": nj}
    new.update({k: ex.meta[k] for k in ("checkpoint", "layer") if k in ex.meta})
    diff = [f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in new.items() if old.get(k) != v]
    if diff:
        raise SslseqError(
            f"{out_dir} already holds other features ({'; '.join(diff)}); dump into a new dir or delete this one"
        )


def _wav_lines(data_dir: Path) -> dict[str, int]:
    """Line numbers of wav.scp entries, for error messages (file:line: utt)."""
    try:
        from sslseq.data.kaldi import read_kaldi_map

        return {u: no for u, (_, no) in read_kaldi_map(data_dir / "wav.scp").items()}
    except (ImportError, SslseqError, OSError):
        return {}


def dump_features(
    data_dir: Path,
    out_dir: Path,
    *,
    feat_type: str,
    nj: int = 1,
    rank: int | None = None,
    device: str = "cpu",
    layer_features: Callable | None = None,
    allow_pipes: bool = False,
    resample: bool = True,
    skip_bad: bool = False,
    batch_seconds: float | None = None,
) -> None:
    """Write shards ``<rank>_<nj>`` (all ranks when ``rank`` is None) and ``feats.yaml`` into ``out_dir``.

    feat_type: "mfcc" (39 = 13 Kaldi MFCC + delta + delta-delta), "fbank" (80 Kaldi log-mel), or
    "layer" (a model's hidden states: ``layer_features``, a
    ``sslseq.models.layer_features.LayerFeatures``, which also fixes the device).
    skip_bad: unreadable (or too short) utterances are listed in ``bad_utts.<rank>_<nj>`` and left
    out of the shard instead of stopping the dump.
    """
    from sslseq.audio import MIN_AUDIO_SECONDS, read_audio
    from sslseq.data.kaldi import load_data_dir

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if feat_type not in FEAT_TYPES:
        raise SslseqError(f"unknown feature type '{feat_type}' (use one of {', '.join(FEAT_TYPES)})")
    store.check_job(nj, rank)
    dd = load_data_dir(data_dir)
    ex = _make_extractor(feat_type, resolve_device(device), layer_features)
    _check_existing_meta(out_dir, ex, nj)
    problems = {}

    def shard_done(r: int) -> bool:  # its files checked (sizes and checksums); features.yaml: the same features
        problems[r] = store.shard_problem(out_dir, r, nj, checksum=True)
        return problems[r] is None

    _, todo = store.blocks_to_do(nj, rank, shard_done, str(out_dir))
    for r in todo:
        if any((out_dir / f"{store.shard_name(r, nj)}.{ext}").exists() for ext in store.SHARD_FILES):
            log.warning("%s; dumping shard %s again", problems[r], store.shard_name(r, nj))
    out_dir.mkdir(parents=True, exist_ok=True)
    store.write_meta(
        out_dir, feat_type=feat_type, dim=ex.dim, frame_rate=ex.frame_rate, nj=nj, sample_rate=SAMPLE_RATE, **ex.meta
    )
    if not todo:
        return
    lines = _wav_lines(data_dir)
    wav_scp = data_dir / "wav.scp"

    def where(utt: str) -> str:
        return f"{wav_scp}:{lines[utt]}: {utt}" if utt in lines else f"{wav_scp}: {utt}"

    def read(batch: list[str]) -> list[tuple[str, np.ndarray | SslseqError]]:
        out: list[tuple[str, np.ndarray | SslseqError]] = []
        for utt in batch:
            try:
                wave = read_audio(
                    dd.wav[utt], sample_rate=SAMPLE_RATE, allow_pipes=allow_pipes, resample=resample, where=where(utt)
                )
                out.append((utt, wave))
            except SslseqError as e:
                out.append((utt, e))
            except Exception as e:  # a decoder's own exception: name the utterance all the same
                out.append((utt, SslseqError(f"{where(utt)}: could not read audio: {type(e).__name__}: {e}")))
        return out

    bsec = batch_seconds or ex.batch_seconds
    # One reader thread: decoding the next batch overlaps with computing this one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        for r in todo:
            start, end = store.shard_bounds(len(dd.utts), nj, r)
            utts = dd.utts[start:end]
            name = store.shard_name(r, nj)
            batches = utterance_batches(utts, dd.utt2dur, bsec)
            feats: dict[str, np.ndarray] = {}
            bad: dict[str, str] = {}
            pending = pool.submit(read, batches[0]) if batches else None
            for i in progress(range(len(batches)), desc=f"feats {feat_type} {name}", unit="batch"):
                loaded = pending.result()
                pending = pool.submit(read, batches[i + 1]) if i + 1 < len(batches) else None
                good: list[tuple[str, np.ndarray]] = []
                for utt, wave in loaded:
                    if isinstance(wave, SslseqError):
                        bad[utt] = str(wave)
                    elif len(wave) < MIN_AUDIO_SECONDS * SAMPLE_RATE:  # no features at all
                        bad[utt] = (
                            f"{where(utt)}: {len(wave) / SAMPLE_RATE:.3f} s of audio is shorter than one 25 ms "
                            f"frame, so it has no {feat_type} features; drop it from the data dir"
                        )
                    else:
                        good.append((utt, wave))
                if bad and not skip_bad:
                    first = next(iter(bad.values()))
                    more = f" ({len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
                    raise SslseqError(
                        f"{first}{more}; 'sslseq data validate {data_dir}' lists every such utterance "
                        f"(or pass --skip-bad to leave them out, listed in {out_dir}/bad_utts.{name})"
                    )
                if good:
                    for (utt, _), f in zip(good, ex([w for _, w in good])):
                        if len(f) == 0:
                            bad[utt] = f"{where(utt)}: the model produced no frames for this utterance (too short)"
                            if not skip_bad:
                                raise SslseqError(bad[utt] + " (or pass --skip-bad to leave it out)")
                        else:
                            feats[utt] = f
            bad_file = out_dir / f"bad_utts.{name}"
            if bad:
                for utt, msg in bad.items():
                    log.warning("skipping %s", msg)
                atomic_write_text(bad_file, "".join(f"{u}\t{bad[u]}\n" for u in utts if u in bad), errors="surrogateescape")
                log.warning("%s: %d bad utterance(s) left out, listed in %s", name, len(bad), bad_file)
            elif bad_file.exists():
                bad_file.unlink()  # stale list from an earlier, failed run
            kept = [u for u in utts if u in feats]
            store.write_shard(out_dir, r, nj, kept, [feats[u] for u in kept])
            log.info("%s: shard %s: %d utterances, %d frames", out_dir, name, len(kept),
                     sum(len(feats[u]) for u in kept))  # fmt: skip
