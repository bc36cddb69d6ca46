"""Tune the LM weight and word score on a dev decode dir (``sslseq lm tune``), never on test.

Each grid point is one lexicon beam search over the dev emissions cached by ``sslseq decode``
(the network is not run), scored in memory. Writes ``OUT/grid.tsv`` (every point: dev WER,
CER, errors, seconds) and ``OUT/params.yaml`` (the best point; written last), OUT being
``DECODE_DIR/lm_tune`` by default. Points run in ``nj`` forked processes that share the LM.

Only the dev set's files are read. A tuning set named ``test*``, or sharing an utterance id or
audio file with a held-out set (by default the ``test*`` data dirs beside it; their
``wav.scp`` is all that is read of them), is refused unless ``force``.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import yaml

from sslseq.asr.lm_decode import LexiconSearch, LmParams, decode_emissions
from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

TUNE_SUBDIR = "lm_tune"
PARAMS = "params.yaml"
GRID = "grid.tsv"
# Around the optimum measured on synth_en dev (0.3 h, HuBERT-initialised CTC on 1 h, 3-gram: lm_weight
# 1, word_score -1; higher LM weights want higher word scores); 16 points of ~1.4 s each at beam 50.
DEFAULT_LM_WEIGHTS = (0.75, 1.0, 1.5, 2.0)
DEFAULT_WORD_SCORES = (-2.0, -1.0, 0.0, 1.0)
DEFAULT_BEAM = 50

_STATE: dict = {}  # what forked workers share: the search, emissions, references


def _is_test_name(path: Path) -> bool:
    return Path(path).name.lower().startswith("test")


def check_not_test(data_dir: Path, held_out: list[Path] | None, *, force: bool) -> list[Path]:
    """Refuse a tuning set that is, or shares utterances with, a held-out (test) set."""
    from sslseq.data.kaldi import read_kaldi_map

    data_dir = Path(data_dir)
    if held_out is None:
        held_out = [p for p in sorted(data_dir.resolve().parent.iterdir())
                    if p.is_dir() and _is_test_name(p) and p.resolve() != data_dir.resolve() and (p / "wav.scp").is_file()]
    if force:
        return held_out
    if _is_test_name(data_dir):
        raise SslseqError(f"{data_dir}: refusing to tune LM weights on a test set; tune on dev (or pass --force if "
                          "this set is not held out)")
    mine = read_kaldi_map(data_dir / "wav.scp")
    my_audio = {v for v, _ in mine.values()}
    for other in held_out:
        theirs = read_kaldi_map(Path(other) / "wav.scp")
        shared = [u for u in theirs if u in mine] or [u for u, (v, _) in theirs.items() if v in my_audio]
        if shared:
            raise SslseqError(
                f"{data_dir}: shares {len(shared)} utterance(s) with the held-out set {other} (e.g. {shared[0]}); "
                "tuning on it would tune on test. Tune on a disjoint dev set (or pass --force)"
            )
    return held_out


def _grid_point(point: tuple[float, float]) -> dict:
    from sslseq.asr.score import score_texts

    lm_weight, word_score = point
    s = _STATE
    params = LmParams(lm_weight=lm_weight, word_score=word_score, beam_size=s["beam"], beam_threshold=s["threshold"])
    hyps, seconds = decode_emissions(s["search"], s["emissions"], s["utts"], params)
    result, _ = score_texts(s["refs"], {u: h.split() for u, h in hyps.items()})
    return {"lm_weight": lm_weight, "word_score": word_score, "wer": round(result.wer, 3), "cer": round(result.cer, 3),
            "sub": result.n_sub, "del": result.n_del, "ins": result.n_ins, "seconds": round(seconds, 3)}


def tune_lm(
    decode_dir: Path,
    lm_dir: Path,
    *,
    out_dir: Path | None = None,
    lm_weights: list[float] | tuple[float, ...] = DEFAULT_LM_WEIGHTS,
    word_scores: list[float] | tuple[float, ...] = DEFAULT_WORD_SCORES,
    beam_size: int = DEFAULT_BEAM,
    beam_threshold: float = LmParams.beam_threshold,
    nj: int = 1,
    held_out: list[Path] | None = None,
    force: bool = False,
) -> dict:
    """Grid-search ``lm_weights`` x ``word_scores`` on the dev set of ``decode_dir``; returns ``params.yaml``."""
    from sslseq.asr import emissions as em
    from sslseq.asr.report import resolve_recipe_path
    from sslseq.asr.score import read_text_file
    from sslseq.data.text import load_tokenizer
    from sslseq.models.exp_dir import UNITS, units_file

    decode_dir = Path(decode_dir)
    if (decode_dir / UNITS).is_file() and not (decode_dir / "decode.yaml").is_file():
        # an experiment dir: its dev decode dir, as the recipe names it
        if not (decode_dir / "decode_dev" / "decode.yaml").is_file():
            raise SslseqError(f"{decode_dir} is an experiment dir without decode_dev/; decode the dev set first "
                              f"(sslseq decode {decode_dir} data/dev {decode_dir}/decode_dev) or pass its decode dir")
        decode_dir = decode_dir / "decode_dev"
    dec_yaml = decode_dir / "decode.yaml"
    if not dec_yaml.is_file():
        raise SslseqError(f"{dec_yaml}: not found; decode the dev set first (sslseq decode EXP data/dev {decode_dir})")
    dec = yaml.safe_load(dec_yaml.read_text()) or {}
    exp_dir = resolve_recipe_path(str(dec["exp_dir"]), decode_dir.resolve())
    data_dir = resolve_recipe_path(str(dec["data_dir"]), decode_dir.resolve())
    if nj < 1:
        raise SslseqError(f"--nj must be >= 1, got {nj}")
    if not lm_weights or not word_scores:
        raise SslseqError("the grid is empty: give at least one --lm-weights and one --word-scores value")
    held = check_not_test(data_dir, held_out, force=force)
    out_dir = Path(out_dir) if out_dir is not None else decode_dir / TUNE_SUBDIR
    ref_path = decode_dir / "ref.txt" if (decode_dir / "ref.txt").is_file() else data_dir / "text"
    refs = {u: w for u, (w, _) in read_text_file(ref_path, "reference").items()}

    tokenizer = load_tokenizer(units_file(exp_dir))
    t0 = time.perf_counter()
    search = LexiconSearch(Path(lm_dir), tokenizer, units_file(exp_dir))
    emissions = em.load(decode_dir, exp_dir, data_dir)
    missing = [u for u in refs if u not in emissions]
    if missing:
        raise SslseqError(f"{ref_path}: {len(missing)} utterance(s) without cached emissions (e.g. {missing[0]}); "
                          f"rerun 'sslseq decode' into {decode_dir}")
    setup_s = time.perf_counter() - t0
    _STATE.update(search=search, emissions=emissions, utts=list(refs), refs=refs, beam=int(beam_size),
                  threshold=float(beam_threshold))
    LmParams(beam_size=beam_size, beam_threshold=beam_threshold).check()
    points = list(itertools.product([float(x) for x in lm_weights], [float(x) for x in word_scores]))
    log.info("tuning on %s: %d points (lm_weight %s x word_score %s, beam %d), %d process(es); LM loaded in %.1f s",
             data_dir, len(points), list(lm_weights), list(word_scores), beam_size, nj, setup_s)
    t0 = time.perf_counter()
    try:
        if nj == 1 or len(points) == 1:
            rows = [_grid_point(p) for p in points]
        else:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(min(nj, len(points))) as pool:
                rows = pool.map(_grid_point, points, chunksize=1)
    finally:
        _STATE.clear()
    wall = time.perf_counter() - t0
    # Lowest WER; ties to the lower CER, then the smaller LM weight and word score (grid order).
    best = min(rows, key=lambda r: (r["wer"], r["cer"], r["lm_weight"], r["word_score"]))
    header = ["lm_weight", "word_score", "wer", "cer", "sub", "del", "ins", "seconds", "best"]
    lines = ["\t".join(header)] + [
        "\t".join(str(r[k]) for k in header[:-1]) + ("\t*" if r is best else "\t") for r in rows
    ]
    atomic_write_text(out_dir / GRID, "\n".join(lines) + "\n")
    params = LmParams(lm_weight=best["lm_weight"], word_score=best["word_score"], beam_size=beam_size,
                      beam_threshold=beam_threshold)
    greedy = yaml.safe_load((decode_dir / "wer.yaml").read_text()) if (decode_dir / "wer.yaml").is_file() else {}
    info = {
        "params": params.to_dict(),
        "tuned_on": str(dec["data_dir"]),
        "decode_dir": str(decode_dir),
        "lm_dir": str(lm_dir),
        "lm_id": search.lm_dir.id,
        "dev_wer": best["wer"],
        "dev_cer": best["cer"],
        "greedy_dev_wer": greedy.get("wer"),
        "greedy_dev_cer": greedy.get("cer"),
        "points": len(rows),
        "nj": nj,
        "seconds_per_point": round(sum(r["seconds"] for r in rows) / len(rows), 3),
        "wall_seconds": round(wall + setup_s, 3),
        "held_out_checked": [str(p) for p in held],
    }
    atomic_write_text(out_dir / PARAMS, yaml.safe_dump(info, sort_keys=False))
    log.info("best on %s: lm_weight %g, word_score %g: WER %.2f, CER %.2f (greedy %s / %s); %d points in %.1f s; %s",
             data_dir, params.lm_weight, params.word_score, best["wer"], best["cer"], greedy.get("wer"),
             greedy.get("cer"), len(rows), wall, out_dir / PARAMS)
    return info
