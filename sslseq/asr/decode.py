"""Decode a Kaldi data dir with a fine-tuned CTC model, then score it (recipe stage 7)."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from sslseq.asr.ctc_decode import beam_decode_batch, greedy_decode
from sslseq.asr.score import ScoreResult, score_files
from sslseq.data.batching import utterance_batches
from sslseq.hw import resolve_device
from sslseq.utils import SslseqError, atomic_write_text, fingerprint, get_logger, progress

if TYPE_CHECKING:
    from sslseq.asr.lm_decode import LmParams

log = get_logger(__name__)


def _pad(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(w) for w in waves], dtype=torch.int64)
    batch = torch.zeros(len(waves), int(lens.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lens


def _normalized_refs(data_dir: Path, text: dict[str, str], out_dir: Path, units: list[str]) -> Path:
    """The data dir's ``text``, or a normalised copy in ``out_dir`` if it is not normalised.

    Hypotheses are always normalised (upper case letters and apostrophes), so a raw
    transcript with case or punctuation would otherwise count as errors. The normalization is
    the model's units' (``normalize_for``): a corpus's own letters are not folded to A-Z.
    """
    from sslseq.data.text import normalize_for

    normalize = normalize_for(units)
    norm = {u: normalize(t) for u, t in text.items()}
    if all(" ".join(t.split()) == norm[u] for u, t in text.items()):
        (out_dir / "ref.txt").unlink(missing_ok=True)  # a stale copy from an earlier run would mislead
        return data_dir / "text"
    changed = sum(" ".join(t.split()) != norm[u] for u, t in text.items())
    log.info("%s: %d transcript(s) are not normalised; scoring against normalised copies in %s",
             data_dir / "text", changed, out_dir / "ref.txt")
    ref = out_dir / "ref.txt"
    atomic_write_text(ref, "".join(f"{u} {norm[u]}\n" for u in text))
    return ref


def _search(log_probs: np.ndarray, beam: int, blank: int) -> list[int]:
    """Greedy (beam 1) or prefix beam search over one utterance's (T, V) log-probs."""
    lp = torch.from_numpy(np.ascontiguousarray(log_probs))[None]
    lens = torch.tensor([lp.shape[1]])
    if beam == 1:
        return greedy_decode(lp, lens, blank=blank)[0]
    return beam_decode_batch(lp, lens, beam=beam, blank=blank)[0]


def _network_emissions(get_model, tokenizer, data, utts: list[str], *, exp_dir: Path, units: Path, data_dir: Path,
                       dev: torch.device, batch_seconds: float, allow_pipes: bool, desc: str):
    """CTC log-probs (float32, valid frames only) of ``utts``, the audio seconds read and the network seconds."""
    from sslseq.audio import read_audio

    model = get_model()
    emissions: dict[str, np.ndarray] = {}
    audio_seconds = network_seconds = 0.0  # the model only, so the RTF does not depend on disk speed
    with torch.inference_mode():
        for batch in progress(utterance_batches(utts, data.utt2dur, batch_seconds, longest_first=True), desc=desc, unit="batch"):
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
            lp = log_probs.float().cpu().numpy()
            network_seconds += time.perf_counter() - t0
            for i, (u, n) in enumerate(zip(batch, out_lens.tolist())):
                emissions[u] = lp[i, : int(n)].copy()
    return emissions, audio_seconds, network_seconds


def _part_id(model_data: str, beam: int) -> str:
    """What a decoded part depends on: the model and data (``emissions.model_data_id``) and the search."""
    return fingerprint(f"beam={beam}\n{model_data}\n")


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
    lm_dir: Path | None = None,
    lm_params: "LmParams | None" = None,
) -> ScoreResult | None:
    """Decode every utterance of ``data_dir`` with the CTC model of ``exp_dir``.

    ``beam`` 1 is greedy decoding, larger values CTC prefix beam search. Writes
    ``out_dir/hyp.txt`` and ``out_dir/decode.yaml``; when the data dir has a ``text``
    file also scores (``wer``, ``wer.yaml``, ``errs``) and returns the result.
    The network's log-probs are cached in ``out_dir/emissions/`` (``sslseq.asr.emissions``):
    a rerun with the same model and data reads them instead of running the network.
    With ``nj`` > 1 the utterances are split into ``nj`` contiguous blocks: ``rank`` R decodes
    block R into ``out_dir/parts/R_nj.yaml`` and its emissions (atomically; a finished part of
    the same model and data is kept), and the call without ``rank`` decodes the parts still
    missing, then joins them into ``hyp.txt`` and scores.
    With ``lm_dir`` (an LM dir of ``sslseq lm build``) the call without ``rank`` then also runs
    the lexicon beam search with the LM (``lm_params``: ``sslseq.asr.lm_decode.LmParams``) over
    the cached emissions into ``out_dir/lm/`` (same files as the greedy results); the greedy
    result is returned either way.
    """
    from sslseq.asr import emissions as em
    from sslseq.data.kaldi import load_data_dir
    from sslseq.data.text import load_tokenizer
    from sslseq.features.store import blocks_to_do, check_job, shard_bounds, shard_name
    from sslseq.models import load as load_model
    from sslseq.models.exp_dir import units_file

    exp_dir, data_dir, out_dir = Path(exp_dir), Path(data_dir), Path(out_dir)
    if beam < 1:
        raise SslseqError(f"beam must be >= 1 (1 = greedy), got {beam}")
    check_job(nj, rank)
    units = units_file(exp_dir)
    tokenizer = load_tokenizer(units)
    data = load_data_dir(data_dir)
    if not data.utts:
        raise SslseqError(f"{data_dir}/wav.scp: no utterances to decode")
    search = None
    if lm_dir is not None and not (rank is not None and nj > 1):  # the call that joins (and scores) searches with the LM
        from sslseq.asr.lm_decode import LexiconSearch, LmParams

        lm_params = lm_params or LmParams()
        lm_params.check()
        search = LexiconSearch(Path(lm_dir), tokenizer, units)  # before any work: a bad LM dir fails now
    dev = resolve_device(device)

    model_data = em.model_data_id(exp_dir, data_dir)
    part_id = _part_id(model_data, beam)
    parts_dir = out_dir / "parts"
    cache_dir = out_dir / em.DIR

    def part_path(r: int) -> Path:
        return parts_dir / f"{shard_name(r, nj)}.yaml"

    def part_done(r: int) -> bool:
        path = part_path(r)
        return (path.is_file() and (yaml.safe_load(path.read_text()) or {}).get("id") == part_id
                and em.block_info(cache_dir, r, nj, model_data) is not None)

    # one block (nj 1) writes no part: it is decoded (from the cached emissions when they are current)
    ranks, todo = blocks_to_do(nj, rank, lambda r: nj > 1 and part_done(r), str(parts_dir))
    model = None

    def get_model():
        nonlocal model
        if model is None:
            model = load_model(exp_dir).to(dev).eval()
        return model

    search_name = "greedy" if beam == 1 else f"prefix beam search, beam {beam}"
    start = time.perf_counter()
    results: dict[int, dict] = {}
    for r in todo:
        lo, hi = shard_bounds(len(data.utts), nj, r)
        block = data.utts[lo:hi]
        cached = em.block_info(cache_dir, r, nj, model_data)
        if cached is not None:
            log.info("decoding %s (%s) from the emissions cached in %s%s", data_dir, search_name, cache_dir,
                     "" if nj == 1 else f": block {r} of {nj}")
            emissions = em.read_block(cache_dir, r, nj)
            audio_s, network_s = cached["audio_seconds"], cached["network_seconds"]
        else:
            log.info("decoding %s with %s (%s)%s", data_dir, exp_dir, search_name, "" if nj == 1 else f": block {r} of {nj}")
            emissions, audio_s, network_s = _network_emissions(
                get_model, tokenizer, data, block, exp_dir=exp_dir, units=units, data_dir=data_dir, dev=dev,
                batch_seconds=batch_seconds, allow_pipes=allow_pipes, desc="decode" if nj == 1 else f"decode {shard_name(r, nj)}",
            )
            em.write_block(cache_dir, r, nj, model_data, block, [emissions[u] for u in block],
                           audio_seconds=audio_s, network_seconds=network_s)
        t0 = time.perf_counter()
        hyps = {u: tokenizer.decode(_search(emissions[u], beam, tokenizer.blank_id)) for u in block}
        compute_s = network_s + time.perf_counter() - t0
        results[r] = {"id": part_id, "audio_seconds": audio_s, "compute_seconds": compute_s,
                      "hyps": [[u, hyps[u]] for u in block]}
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
    n_frames = sum(int(n) for r in ranks for n in (cache_dir / f"{shard_name(r, nj)}.len").read_text().split())
    em.finish(cache_dir, nj, model_data, len(tokenizer), n_frames / audio_seconds if audio_seconds > 0 else 0.0)

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
        "emissions": str(cache_dir),
    }
    atomic_write_text(out_dir / "decode.yaml", yaml.safe_dump(info, sort_keys=False))
    log.info("decoded %.1f s of audio (RTF %.4f); hypotheses in %s", audio_seconds, info["rtf"] or 0.0, hyp_path)

    ref = None
    result = None
    if data.text:
        ref = _normalized_refs(data_dir, data.text, out_dir, tokenizer.units)
        result = score_files(ref, hyp_path, out_dir)
        log.info("%s:\n%s", out_dir, result.summary())
    else:
        log.info("%s has no text file: not scoring", data_dir)
    if search is not None:
        _lm_decode(search, lm_params, em.load(out_dir, exp_dir, data_dir), data, ref, out_dir, info)
    return result


def _lm_decode(search, params, emissions: dict, data, ref: Path | None, out_dir: Path, greedy_info: dict) -> None:
    """The lexicon beam search with the LM over the cached emissions, into ``out_dir/lm/``."""
    from sslseq.asr.lm_decode import LM_SUBDIR, decode_emissions, write_lm_results

    lm_out = out_dir / LM_SUBDIR
    t0 = time.perf_counter()
    hyps, search_s = decode_emissions(search, emissions, data.utts, params)
    audio = greedy_info["audio_seconds"]
    info = {
        "exp_dir": greedy_info["exp_dir"],
        "data_dir": greedy_info["data_dir"],
        "search": "lexicon beam search (flashlight-text) with a word n-gram LM",
        "lm_dir": str(search.lm_dir.path),
        "lm_id": search.lm_dir.id,
        "lm_order": search.lm_dir.info.get("order"),
        "params": params.to_dict(),
        "n_utts": len(data.utts),
        "audio_seconds": audio,
        "search_seconds": round(search_s, 3),
        "search_rtf": round(search_s / audio, 6) if audio else None,
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "emissions": greedy_info["emissions"],
    }
    result = write_lm_results(lm_out, data.utts, hyps, ref, info)
    log.info("LM decoding (lm_weight %g, word_score %g, beam %d): %.1f s of search (RTF %.4f); hypotheses in %s%s",
             params.lm_weight, params.word_score, params.beam_size, search_s, info["search_rtf"] or 0.0,
             lm_out / "hyp.txt", "" if result is None else f"\n{result.summary()}")
