"""Decode a Kaldi data dir with a fine-tuned CTC model, then score it (recipe stage 7)."""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sslseq.asr.ctc_decode import beam_decode_batch, greedy_decode
from sslseq.asr.score import ScoreResult, score_files
from sslseq.utils import SslseqError, atomic_write_text, get_logger, progress

log = get_logger(__name__)


def make_batches(utts: list[str], durations: dict[str, float], batch_seconds: float) -> list[list[str]]:
    """Group utterances, longest first, so that ``len(batch) * longest <= batch_seconds``.

    Sorting by length keeps padding small; an utterance longer than the budget is
    decoded alone.
    """
    if batch_seconds <= 0:
        raise SslseqError(f"--batch-seconds must be positive, got {batch_seconds}")
    order = sorted(utts, key=lambda u: (-durations[u], u))
    batches: list[list[str]] = []
    cur: list[str] = []
    longest = 0.0
    for u in order:
        d = durations[u]
        if cur and (len(cur) + 1) * max(longest, d) > batch_seconds:
            batches.append(cur)
            cur, longest = [], 0.0
        cur.append(u)
        longest = max(longest, d)
    if cur:
        batches.append(cur)
    return batches


def _pad(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    batch = torch.zeros(len(waves), int(lens.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lens


def _normalized_refs(data_dir: Path, text: dict[str, str], out_dir: Path) -> Path:
    """The data dir's ``text``, or a normalised copy in ``out_dir`` if it is not normalised.

    Hypotheses are always normalised (upper case letters and apostrophes), so a raw
    transcript with case or punctuation would otherwise count as errors.
    """
    from sslseq.data.text import normalize_text

    norm = {u: normalize_text(t) for u, t in text.items()}
    if all(" ".join(t.split()) == norm[u] for u, t in text.items()):
        (out_dir / "ref.txt").unlink(missing_ok=True)  # a stale copy from an earlier run would mislead
        return data_dir / "text"
    changed = sum(" ".join(t.split()) != norm[u] for u, t in text.items())
    log.info("%s: %d transcript(s) are not normalised; scoring against normalised copies in %s",
             data_dir / "text", changed, out_dir / "ref.txt")
    ref = out_dir / "ref.txt"
    atomic_write_text(ref, "".join(f"{u} {norm[u]}\n" for u in text))
    return ref


def _decode_utts(model, tokenizer, data, utts: list[str], *, exp_dir: Path, units: Path, data_dir: Path,
                 dev: torch.device, batch_seconds: float, beam: int, allow_pipes: bool, desc: str):
    """Hypotheses of ``utts``, the audio seconds read and the seconds spent in model + search."""
    from sslseq.audio import read_audio

    hyps: dict[str, str] = {}
    audio_seconds = compute_seconds = 0.0  # model + search only, so the RTF does not depend on disk speed
    with torch.inference_mode():
        for batch in progress(make_batches(utts, data.utt2dur, batch_seconds), desc=desc, unit="batch"):
            waves = [
                read_audio(data.wav[u], allow_pipes=allow_pipes, where=f"{data_dir / 'wav.scp'}: {u}") for u in batch
            ]
            audio_seconds += sum(len(w) for w in waves) / 16000.0
            t0 = time.perf_counter()
            wav, wav_lens = _pad(waves)
            log_probs, out_lens = model.log_probs(wav.to(dev), wav_lens.to(dev))
            if log_probs.shape[-1] != len(tokenizer):
                raise SslseqError(
                    f"{exp_dir}: the model outputs {log_probs.shape[-1]} units but {units} lists {len(tokenizer)}; "
                    "the units file does not belong to this model"
                )
            if beam == 1:
                ids = greedy_decode(log_probs, out_lens, blank=tokenizer.blank_id)
            else:
                ids = beam_decode_batch(log_probs.float(), out_lens, beam=beam, blank=tokenizer.blank_id)
            compute_seconds += time.perf_counter() - t0
            for u, seq in zip(batch, ids):
                hyps[u] = tokenizer.decode(seq)
    return hyps, audio_seconds, compute_seconds


def _part_id(exp_dir: Path, data_dir: Path, beam: int) -> str:
    """What a decoded part depends on: the model file, the utterance list and the search."""
    h = hashlib.sha256(f"beam={beam}\n".encode())
    for path in (exp_dir / "model.safetensors", exp_dir / "units.txt", exp_dir / "config.yaml"):
        if not path.is_file():
            continue
        st = path.stat()
        h.update(f"{path.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    h.update((data_dir / "wav.scp").read_bytes())
    return h.hexdigest()[:20]


def decode_data_dir(
    exp_dir: Path,
    data_dir: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    batch_seconds: float = 200.0,
    beam: int = 1,
    allow_pipes: bool = False,
    nj: int = 1,
    rank: int | None = None,
) -> ScoreResult | None:
    """Decode every utterance of ``data_dir`` with the CTC model of ``exp_dir``.

    ``beam`` 1 is greedy decoding, larger values CTC prefix beam search. Writes
    ``out_dir/hyp.txt`` and ``out_dir/decode.yaml``; when the data dir has a ``text``
    file also scores (``wer``, ``wer.yaml``, ``errs``) and returns the result.
    With ``nj`` > 1 the utterances are split into ``nj`` contiguous blocks: ``rank`` R decodes
    block R into ``out_dir/parts/R_nj.yaml`` (atomically; a finished part of the same model and
    data is kept), and the call without ``rank`` decodes the parts still missing, then joins
    them into ``hyp.txt`` and scores.
    """
    from sslseq.data.kaldi import load_data_dir
    from sslseq.data.text import CharTokenizer
    from sslseq.features.store import shard_bounds, shard_name
    from sslseq.models import load as load_model

    exp_dir, data_dir, out_dir = Path(exp_dir), Path(data_dir), Path(out_dir)
    if beam < 1:
        raise SslseqError(f"beam must be >= 1 (1 = greedy), got {beam}")
    if nj < 1:
        raise SslseqError(f"--nj must be >= 1, got {nj}")
    units = exp_dir / "units.txt"
    if not units.is_file():
        raise SslseqError(f"{units}: not found; {exp_dir} must be a fine-tuned CTC experiment dir (sslseq train)")
    tokenizer = CharTokenizer.from_file(units)
    data = load_data_dir(data_dir)
    if not data.utts:
        raise SslseqError(f"{data_dir}/wav.scp: no utterances to decode")
    ranks = [rank] if rank is not None else list(range(nj))
    for r in ranks:
        shard_bounds(len(data.utts), nj, r)  # validates the rank
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise SslseqError(f"--device {device!r} is not a valid torch device: {e}") from None

    part_id = _part_id(exp_dir, data_dir, beam)
    parts_dir = out_dir / "parts"

    def part_path(r: int) -> Path:
        return parts_dir / f"{shard_name(r, nj)}.yaml"

    def part_done(r: int) -> bool:
        path = part_path(r)
        return path.is_file() and (yaml.safe_load(path.read_text()) or {}).get("id") == part_id

    todo = ranks if nj == 1 else [r for r in ranks if not part_done(r)]
    model = None
    if todo:
        model = load_model(exp_dir).to(dev).eval()
        log.info("decoding %s with %s (%s)%s", data_dir, exp_dir, "greedy" if beam == 1 else f"prefix beam search, beam {beam}",
                 "" if nj == 1 else f": block(s) {', '.join(map(str, todo))} of {nj}")
    start = time.perf_counter()
    results: dict[int, dict] = {}
    for r in todo:
        lo, hi = shard_bounds(len(data.utts), nj, r)
        hyps, audio_s, compute_s = _decode_utts(
            model, tokenizer, data, data.utts[lo:hi], exp_dir=exp_dir, units=units, data_dir=data_dir, dev=dev,
            batch_seconds=batch_seconds, beam=beam, allow_pipes=allow_pipes,
            desc="decode" if nj == 1 else f"decode {shard_name(r, nj)}",
        )
        results[r] = {"id": part_id, "audio_seconds": audio_s, "compute_seconds": compute_s,
                      "hyps": [[u, hyps[u]] for u in data.utts[lo:hi]]}
        if nj > 1:
            atomic_write_text(part_path(r), yaml.safe_dump(results[r], sort_keys=False, allow_unicode=True))
    if rank is not None and nj > 1:
        return None  # one block; the call without --rank joins the parts
    for r in ranks:
        if r not in results:
            results[r] = yaml.safe_load(part_path(r).read_text())
    wall = time.perf_counter() - start
    hyps = {u: h for r in ranks for u, h in results[r]["hyps"]}
    audio_seconds = sum(results[r]["audio_seconds"] for r in ranks)
    compute_seconds = sum(results[r]["compute_seconds"] for r in ranks)

    out_dir.mkdir(parents=True, exist_ok=True)
    hyp_path = out_dir / "hyp.txt"
    atomic_write_text(hyp_path, "".join(f"{u} {hyps[u]}".rstrip() + "\n" for u in data.utts))
    info = {
        "exp_dir": str(exp_dir),
        "data_dir": str(data_dir),
        "beam": beam,
        "device": str(dev),
        "nj": nj,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "n_utts": len(data.utts),
        "audio_seconds": round(audio_seconds, 3),
        "wall_seconds": round(wall, 3),
        "compute_seconds": round(compute_seconds, 3),
        "rtf": round(compute_seconds / audio_seconds, 6) if audio_seconds > 0 else None,
        "rtf_wall": round(wall / audio_seconds, 6) if audio_seconds > 0 and nj == 1 else None,
    }
    atomic_write_text(out_dir / "decode.yaml", yaml.safe_dump(info, sort_keys=False))
    log.info("decoded %.1f s of audio (RTF %.4f); hypotheses in %s", audio_seconds, info["rtf"] or 0.0, hyp_path)

    if not data.text:
        log.info("%s has no text file: not scoring", data_dir)
        return None
    ref = _normalized_refs(data_dir, data.text, out_dir)
    result = score_files(ref, hyp_path, out_dir)
    log.info("%s:\n%s", out_dir, result.summary())
    return result
