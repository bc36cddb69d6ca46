"""LM training text that never contains an evaluation sentence.

A dev or test sentence is *in* an LM text when a line equals it, or, for sentences of at
least ``CONTAINED_MIN_WORDS`` words, when a line contains it as a run of whole words (the
LM would then have seen every n-gram of the sentence). ``write_lm_text`` drops such lines;
``check_overlap`` fails on any. Both read the sentences from the data dirs' ``text`` files,
normalised as transcripts are for the unit set (``sslseq.data.text.normalize_for``: A-Z for the
default units, a corpus's own letters for its ``units.txt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml

from sslseq.data.text import DEFAULT_UNITS, CharTokenizer, normalize_for, normalize_text
from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

CONTAINED_MIN_WORDS = 4  # shorter sentences ("AMEN") count only as whole lines
_SHOWN = 5


def eval_sentences(data_dirs: list[Path], normalize: Callable[[str], str] = normalize_text) -> dict[str, str]:
    """Normalised sentence -> where it comes from (``data/dev/text:12``) for every data dir."""
    out: dict[str, str] = {}
    for d in data_dirs:
        path = Path(d) / "text"
        if not path.is_file():
            raise SslseqError(f"{path}: not found; the sentences to keep out of the LM are read from each data dir's text")
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split(maxsplit=1)
            if len(parts) == 2:
                s = normalize(parts[1])
                if s:
                    out.setdefault(s, f"{path}:{no}")
    return out


def source_lines(paths: list[Path]) -> Iterable[str]:
    """The sentences of each path, for ``write_lm_text``: a data dir gives its text's transcripts
    (ids dropped), a file one sentence a line (e.g. LibriSpeech's librispeech-lm-norm.txt)."""
    for p in map(Path, paths):
        ids = p.is_dir()
        f = p / "text" if ids else p
        if not f.is_file():
            raise SslseqError(f"{f}: not found (an LM text source: a data dir with a text file, or a text file)")
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                yield line.split(maxsplit=1)[1] if ids and " " in line.strip() else ("" if ids else line)


@dataclass
class _Index:
    exact: set[str]
    by_prefix: dict[tuple[str, ...], list[tuple[str, ...]]]  # first CONTAINED_MIN_WORDS words -> sentences

    @classmethod
    def build(cls, sentences: Iterable[str]) -> "_Index":
        exact = set(sentences)
        by_prefix: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for s in exact:
            w = tuple(s.split())
            if len(w) >= CONTAINED_MIN_WORDS:
                by_prefix.setdefault(w[:CONTAINED_MIN_WORDS], []).append(w)
        return cls(exact, by_prefix)

    def match(self, line: str) -> str | None:
        """The evaluation sentence that ``line`` is or contains, if any."""
        if line in self.exact:
            return line
        words = line.split()
        k = CONTAINED_MIN_WORDS
        for i in range(len(words) - k + 1):
            for s in self.by_prefix.get(tuple(words[i : i + k]), ()):
                if tuple(words[i : i + len(s)]) == s:
                    return " ".join(s)
        return None


def _tokenizer(units: Path | None) -> CharTokenizer:
    return CharTokenizer.from_file(units) if units else CharTokenizer(DEFAULT_UNITS)


def write_lm_text(lines: Iterable[str], out: Path, exclude_dirs: list[Path], units: Path | None = None) -> dict:
    """Normalise ``lines`` and write those that hold no sentence of ``exclude_dirs`` to ``out``.

    ``units``: the CTC units file (default A-Z, apostrophe): lines are normalised for it
    (``normalize_for``) and must be spellable in it. Also writes ``out`` + ``.yaml`` (counts,
    which sets were excluded). Returns those counts.
    """
    out = Path(out)
    if not exclude_dirs:
        raise SslseqError("no data dirs to exclude: pass the dev and test data dirs (their sentences must stay out of the LM)")
    tok = _tokenizer(units)
    normalize = normalize_for(tok.units)
    held_out = eval_sentences(exclude_dirs, normalize)
    index = _Index.build(held_out)
    kept: list[str] = []
    n_in = n_exact = n_contained = 0
    matched: set[str] = set()
    for raw in lines:
        line = normalize(raw)
        if not line:
            continue
        n_in += 1
        bad = tok.check_text(line)
        if bad:  # normalize_text keeps only units; a new unit set must change both
            raise SslseqError(f"LM text line {line!r} has characters {bad} outside the unit set"
                              f"{f' of {units}' if units else ' (A-Z, apostrophe; --units FILE for others)'}")
        hit = index.match(line)
        if hit is None:
            kept.append(line)
            continue
        matched.add(hit)
        if hit == line:
            n_exact += 1
        else:
            n_contained += 1
    if not kept:
        raise SslseqError(f"{out}: every LM text line holds a dev/test sentence; nothing left to train on")
    atomic_write_text(out, "".join(f"{x}\n" for x in kept))
    info = {
        "lines_in": n_in,
        "lines": len(kept),
        "words": sum(len(x.split()) for x in kept),
        "excluded_lines": n_exact + n_contained,
        "excluded_equal": n_exact,
        f"excluded_containing_{CONTAINED_MIN_WORDS}plus_words": n_contained,
        "eval_sentences": len(held_out),
        "eval_sentences_found": len(matched),
        "excluded_from": [str(d) for d in exclude_dirs],
    }
    atomic_write_text(Path(f"{out}.yaml"), yaml.safe_dump(info, sort_keys=False))
    log.info(
        "%s: %d lines (%d words); excluded %d of %d lines that hold one of the %d sentences of %s "
        "(%d equal, %d containing one; %d of the sentences occur in the source text)",
        out, len(kept), info["words"], info["excluded_lines"], n_in, len(held_out),
        " ".join(map(str, exclude_dirs)), n_exact, n_contained, len(matched),
    )
    return info


def check_overlap(lm_text: Path, data_dirs: list[Path], units: Path | None = None) -> int:
    """Raise if a line of ``lm_text`` is or contains a sentence of ``data_dirs`` (normalised for
    ``units``, as ``write_lm_text`` does); returns the lines checked."""
    lm_text = Path(lm_text)
    if not lm_text.is_file():
        raise SslseqError(f"{lm_text}: LM text not found (write it with 'sslseq lm text' or the corpus's local/lm_text.sh)")
    held_out = eval_sentences(data_dirs, normalize_for(_tokenizer(units).units))
    index = _Index.build(held_out)
    hits: list[str] = []
    n = 0
    with open(lm_text, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            n += 1
            s = index.match(" ".join(line.split()))
            if s is not None:
                hits.append(f"{lm_text}:{no} holds {held_out[s]} ({s!r})")
    if hits:
        raise SslseqError(
            f"{lm_text}: {len(hits)} line(s) hold an evaluation sentence, e.g. {'; '.join(hits[:_SHOWN])}; "
            "rebuild the LM text excluding these data dirs (sslseq lm text --exclude ..., or the corpus's local/lm_text.sh)"
        )
    log.info("%s: none of its %d lines holds one of the %d sentences of %s", lm_text, n, len(held_out),
             " ".join(map(str, data_dirs)))
    return n
