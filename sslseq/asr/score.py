"""Word and character error rates of Kaldi text files, with Kaldi-style summaries.

Alignment is jiwer's (Levenshtein over words, and over characters for CER). Text is
compared as written: only whitespace is normalised, so case and punctuation must already
agree (``sslseq decode`` normalises its references when they need it).
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

_FIRST_IDS_SHOWN = 5
_TOP_ERRORS = 50  # most frequent substitutions/deletions/insertions listed in ``errs``


@dataclass
class ScoreResult:
    """Error counts of a scored set. ``wer``/``cer`` are percentages, as Kaldi prints them."""

    wer: float
    cer: float
    n_ref_words: int
    n_sub: int
    n_del: int
    n_ins: int
    n_utts: int
    n_sent_err: int
    n_ref_chars: int = 0
    n_char_sub: int = 0
    n_char_del: int = 0
    n_char_ins: int = 0
    n_missing: int = 0  # reference utterances without a hypothesis (scored as empty)

    @property
    def n_word_err(self) -> int:
        return self.n_sub + self.n_del + self.n_ins

    @property
    def ser(self) -> float:
        return _percent(self.n_sent_err, self.n_utts)

    def summary(self) -> str:
        """Kaldi compute-wer style lines: %WER, %SER, %CER."""
        n_char_err = self.n_char_sub + self.n_char_del + self.n_char_ins
        return (
            f"%WER {self.wer:.2f} [ {self.n_word_err} / {self.n_ref_words}, "
            f"{self.n_ins} ins, {self.n_del} del, {self.n_sub} sub ]\n"
            f"%SER {self.ser:.2f} [ {self.n_sent_err} / {self.n_utts} ]\n"
            f"%CER {self.cer:.2f} [ {n_char_err} / {self.n_ref_chars}, "
            f"{self.n_char_ins} ins, {self.n_char_del} del, {self.n_char_sub} sub ]"
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ser"] = self.ser
        return d


def _percent(errors: int, total: int) -> float:
    # Kaldi's convention for an empty reference: any error is 100 %, otherwise 0 %.
    if total == 0:
        return 100.0 if errors else 0.0
    return 100.0 * errors / total


def read_text_file(path: Path, what: str) -> dict[str, tuple[list[str], int]]:
    """``utt -> (words, line_no)`` of a Kaldi text file; an id alone is an empty transcript."""
    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: {what} file not found (expected '<utt> <word> <word> ...' lines)")
    out: dict[str, tuple[list[str], int]] = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue  # blank lines carry nothing; Kaldi's tools skip them too
            utt = parts[0]
            if utt in out:
                raise SslseqError(
                    f"{path}:{no}: {utt}: duplicate utterance id (first on line {out[utt][1]}); keep one line per utterance"
                )
            out[utt] = (parts[1:], no)
    return out


def _align_ops(ref: list, hyp: list, chunks) -> list[tuple[str, str | None, str | None]]:
    """(op, ref_token, hyp_token) per aligned position; op is one of = S D I."""
    ops: list[tuple[str, str | None, str | None]] = []
    for ch in chunks:
        r = ref[ch.ref_start_idx : ch.ref_end_idx]
        h = hyp[ch.hyp_start_idx : ch.hyp_end_idx]
        if ch.type == "equal":
            ops += [("=", a, b) for a, b in zip(r, h)]
        elif ch.type == "substitute":
            ops += [("S", a, b) for a, b in zip(r, h)]
        elif ch.type == "delete":
            ops += [("D", a, None) for a in r]
        elif ch.type == "insert":
            ops += [("I", None, b) for b in h]
        else:  # a jiwer we do not know; failing loudly beats a wrong errs file
            raise RuntimeError(f"unknown jiwer alignment chunk type {ch.type!r}")
    return ops


def _format_errs(
    result: ScoreResult, utts: list[str], refs: list[list[str]], hyps: list[list[str]], alignments
) -> str:
    lines = [
        result.summary(),
        "",
        "Sections: PER-UTT DETAILS (utterances with errors), SUBSTITUTIONS, DELETIONS, INSERTIONS.",
        "Aligned lines: *** marks a missing word; ops: S substitution, D deletion, I insertion.",
        "",
        "PER-UTT DETAILS:",
    ]
    subs: collections.Counter = collections.Counter()
    dels: collections.Counter = collections.Counter()
    inss: collections.Counter = collections.Counter()
    for utt, ref, hyp, chunks in zip(utts, refs, hyps, alignments):
        ops = _align_ops(ref, hyp, chunks)
        if all(op == "=" for op, _, _ in ops):
            continue
        cols_r, cols_h, cols_o = [], [], []
        for op, r, h in ops:
            r, h = r if r is not None else "***", h if h is not None else "***"
            w = max(len(r), len(h))
            cols_r.append(r.ljust(w))
            cols_h.append(h.ljust(w))
            cols_o.append(("" if op == "=" else op).ljust(w))
            if op == "S":
                subs[(r, h)] += 1
            elif op == "D":
                dels[r] += 1
            elif op == "I":
                inss[h] += 1
        lines += [
            f"{utt} ref: {' '.join(cols_r)}".rstrip(),
            f"{utt} hyp: {' '.join(cols_h)}".rstrip(),
            f"{utt} ops: {' '.join(cols_o)}".rstrip(),
            "",
        ]
    # Most frequent first; ties alphabetically so the file is reproducible.
    lines.append(f"SUBSTITUTIONS: count ref -> hyp (top {_TOP_ERRORS})")
    lines += [f"{n:6d} {r} -> {h}" for (r, h), n in sorted(subs.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_ERRORS]]
    lines += ["", f"DELETIONS: count ref (top {_TOP_ERRORS})"]
    lines += [f"{n:6d} {r}" for r, n in sorted(dels.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_ERRORS]]
    lines += ["", f"INSERTIONS: count hyp (top {_TOP_ERRORS})"]
    lines += [f"{n:6d} {h}" for h, n in sorted(inss.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_ERRORS]]
    return "\n".join(lines) + "\n"


def score_texts(refs: dict[str, list[str]], hyps: dict[str, list[str]]) -> tuple[ScoreResult, object]:
    """Score word lists per utterance (``hyps`` keys must be a subset of ``refs``).

    Returns the result and jiwer's word output (alignments, in ``refs`` order).
    """
    import jiwer

    utts = list(refs)
    ref_lists = [refs[u] for u in utts]
    hyp_lists = [hyps.get(u, []) for u in utts]
    if not utts:
        return ScoreResult(0.0, 0.0, 0, 0, 0, 0, 0, 0), None
    # jiwer's default transform splits on whitespace, so joined words round-trip exactly.
    ref_str = [" ".join(r) for r in ref_lists]
    hyp_str = [" ".join(h) for h in hyp_lists]
    words = jiwer.process_words(ref_str, hyp_str)
    chars = jiwer.process_characters(ref_str, hyp_str)
    n_ref = sum(len(r) for r in ref_lists)
    n_ref_chars = sum(len(r) for r in ref_str)  # spaces count: a missed word boundary is an error
    n_sent_err = sum(r != h for r, h in zip(ref_lists, hyp_lists))
    result = ScoreResult(
        wer=_percent(words.substitutions + words.deletions + words.insertions, n_ref),
        cer=_percent(chars.substitutions + chars.deletions + chars.insertions, n_ref_chars),
        n_ref_words=n_ref,
        n_sub=words.substitutions,
        n_del=words.deletions,
        n_ins=words.insertions,
        n_utts=len(utts),
        n_sent_err=n_sent_err,
        n_ref_chars=n_ref_chars,
        n_char_sub=chars.substitutions,
        n_char_del=chars.deletions,
        n_char_ins=chars.insertions,
        n_missing=sum(u not in hyps for u in utts),
    )
    return result, words


def score_files(ref: Path, hyp: Path, out_dir: Path | None = None) -> ScoreResult:
    """WER/CER of Kaldi text ``hyp`` against ``ref``.

    Reference utterances missing from ``hyp`` count as empty hypotheses (with a warning);
    hypotheses without a reference are an error. With ``out_dir``, writes ``wer`` (the
    summary), ``wer.yaml`` (all numbers) and ``errs`` (per-utterance alignments and the
    most frequent errors).
    """
    ref, hyp = Path(ref), Path(hyp)
    refs = read_text_file(ref, "reference")
    hyps = read_text_file(hyp, "hypothesis")
    extra = [(u, no) for u, (_, no) in hyps.items() if u not in refs]
    if extra:
        u, no = min(extra, key=lambda x: x[1])
        raise SslseqError(
            f"{hyp}:{no}: {u}: utterance has no reference in {ref} ({len(extra)} such hypothesis line(s)); "
            "score against the text of the data dir that was decoded"
        )
    missing = [u for u in refs if u not in hyps]
    if missing:
        shown = ", ".join(missing[:_FIRST_IDS_SHOWN]) + (", ..." if len(missing) > _FIRST_IDS_SHOWN else "")
        log.warning(
            "%s: %d of %d reference utterance(s) have no hypothesis in %s and count as empty (all words deleted): %s",
            ref, len(missing), len(refs), hyp, shown,
        )
    if not refs:
        raise SslseqError(f"{ref}: no utterances in the reference file; nothing to score")
    ref_words = {u: w for u, (w, _) in refs.items()}
    hyp_words = {u: w for u, (w, _) in hyps.items()}
    result, words = score_texts(ref_words, hyp_words)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "wer", result.summary() + "\n")
        data = {"ref": str(ref), "hyp": str(hyp), **result.to_dict()}
        atomic_write_text(out_dir / "wer.yaml", yaml.safe_dump(data, sort_keys=False))
        utts = list(ref_words)
        errs = _format_errs(
            result, utts, [ref_words[u] for u in utts], [hyp_words.get(u, []) for u in utts], words.alignments
        )
        atomic_write_text(out_dir / "errs", errs)
    return result
