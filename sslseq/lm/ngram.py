"""The LM dir: a word n-gram ARPA and the lexicon that spells its words in CTC units.

``sslseq lm build TEXT OUT_DIR`` writes
  ``lm.arpa``      back-off Kneser-Ney (unmodified, SRILM ``-ukndiscount``; kaldingram), log10
  ``lexicon.txt``  ``WORD W O R D |``: every LM word and its spelling, ending in the word
                   separator as fairseq/flashlight letter lexicons do
  ``units.txt``    the unit set the spellings use (the CTC model's must contain it)
  ``lm.yaml``      order, vocab size, n-gram counts, dev perplexity, sizes and hashes of the
                   files above; written last, so its presence marks a complete LM dir.
Every file is written atomically. ``load_lm_dir`` checks the dir against ``lm.yaml``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from sslseq.data.text import WORD_SEP, Tokenizer, load_tokenizer, read_units
from sslseq.utils import SslseqError, atomic_path, atomic_write_text, file_sha256, get_logger

log = get_logger(__name__)

ARPA = "lm.arpa"
LEXICON = "lexicon.txt"
UNITS = "units.txt"
INFO = "lm.yaml"
MAX_ORDER = 5  # kaldingram's limit
SENTENCE_MARKS = ("<s>", "</s>", "<unk>")


def spell(word: str, tokenizer: Tokenizer) -> list[str]:
    """``word``'s units (letters and the word separator, or BPE pieces); an error if a character has no unit."""
    bad = tokenizer.unspellable(word)
    if bad or not word:
        raise SslseqError(
            f"word {word!r} cannot be spelled in the units {''.join(u for u in tokenizer.units if len(u) == 1)} "
            f"(no unit for {''.join(dict.fromkeys(bad)) or 'an empty word'}); normalise the LM text "
            "(sslseq lm text, or the corpus's local/lm_text.sh) or use the model's units.txt (--units)"
        )
    return tokenizer.spell(word)


def read_text_lines(path: Path, tokenizer: Tokenizer) -> list[str]:
    """Whitespace-normalised lines of an LM text; every word must be spellable in the units."""
    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: LM text not found (write it with 'sslseq lm text' or the corpus's local/lm_text.sh)")
    lines: list[str] = []
    seen_ok: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for no, raw in enumerate(f, 1):
            words = raw.split()
            for w in words:
                if w in seen_ok:
                    continue
                if w in SENTENCE_MARKS:
                    raise SslseqError(f"{path}:{no}: {w} is a sentence marker the LM adds itself; remove it from the text")
                try:
                    spell(w, tokenizer)
                except SslseqError as e:
                    raise SslseqError(f"{path}:{no}: {e}") from None
                seen_ok.add(w)
            if words:
                lines.append(" ".join(words))
    if not lines:
        raise SslseqError(f"{path}: no text lines; nothing to train an LM on")
    return lines


@contextlib.contextmanager
def _quiet_progress():
    """kaldingram's tqdm bars and KenLM's loading banner (C++, on fd 2) only on a terminal."""
    if sys.stderr.isatty() and os.environ.get("SSLSEQ_NO_PROGRESS") != "1":
        yield
        return
    import kaldingram.train
    from tqdm import tqdm

    kaldingram.train.tqdm = functools.partial(tqdm, disable=True)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        kaldingram.train.tqdm = tqdm


def _train_arpa(lines: list[str], order: int, out: Path) -> list[int]:
    """kaldingram's Kneser-Ney back-off model of ``lines`` into ``out``; the n-gram count per order."""
    from kaldingram.train import NgramCounts

    with _quiet_progress():
        counts = NgramCounts(order)
        for line in lines:
            counts.add_raw_counts_from_line(line)
        counts.cal_discounting_constants()
        counts.cal_f()
        counts.cal_bow()
        with atomic_path(out) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                counts.print_as_arpa(fout=f)
    return [sum(len(h.word_to_f) for h in counts.counts[n].values()) for n in range(order)]


def load_kenlm(arpa: Path, words: list[str]):
    """flashlight's KenLM over ``arpa`` and its word dictionary (``words`` then ``<unk>``, which the
    ARPA lacks: KenLM gives it log10 probability -100, and the lexicon search never emits it)."""
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    dictionary = Dictionary()
    for w in words:
        dictionary.add_entry(w)
    dictionary.add_entry("<unk>")
    try:
        with _quiet_progress():
            lm = KenLM(str(arpa), dictionary)
    except Exception as e:  # KenLM's format errors come as RuntimeError/ValueError with its message
        raise SslseqError(f"{arpa}: KenLM cannot read it ({e}); rebuild the LM dir with 'sslseq lm build'") from None
    return lm, dictionary


def arpa_vocab(arpa: Path) -> list[str]:
    """The words of an ARPA's 1-gram section, without ``<s>``, ``</s>`` and ``<unk>``."""
    words: list[str] = []
    section = None
    with open(arpa, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                section = line
                if line == "\\2-grams:" or line == "\\end\\":
                    break
                continue
            if section == "\\1-grams:" and line:
                w = line.split("\t")[1] if "\t" in line else line.split()[1]
                if w not in SENTENCE_MARKS:
                    words.append(w)
    return words


def write_lexicon(words: list[str], tokenizer: Tokenizer, path: Path) -> None:
    atomic_write_text(path, "".join(f"{w} {' '.join(spell(w, tokenizer))}\n" for w in words))


def read_lexicon(path: Path) -> dict[str, list[str]]:
    """word -> spelling (units, ending in the word separator) of a lexicon file."""
    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: lexicon not found; rebuild the LM dir with 'sslseq lm build'")
    lex: dict[str, list[str]] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise SslseqError(f"{path}:{no}: {parts[0]!r} has no spelling (expected 'WORD W O R D {WORD_SEP}')")
        if parts[0] in lex:
            raise SslseqError(f"{path}:{no}: {parts[0]} is listed twice; keep one spelling per word")
        lex[parts[0]] = parts[1:]
    if not lex:
        raise SslseqError(f"{path}: empty lexicon; rebuild the LM dir with 'sslseq lm build'")
    return lex


class _ArpaScorer:
    """log10 probabilities of word sequences from an ARPA through KenLM (flashlight-text)."""

    def __init__(self, arpa: Path, words: list[str]):
        self.lm, self.dict = load_kenlm(arpa, words)
        self.vocab = set(words)

    def sentence(self, words: list[str]) -> tuple[float, int, int]:
        """(log10 prob of the in-vocabulary words and </s>, scored tokens, OOV words).

        SRILM's convention: an OOV word is not scored and the words after it are scored
        without the context before it.
        """
        state = self.lm.start(False)
        total, scored, oov = 0.0, 0, 0
        for w in words:
            if w not in self.vocab:
                oov += 1
                state = self.lm.start(True)
                continue
            state, s = self.lm.score(state, self.dict.get_index(w))
            total += s
            scored += 1
        _, s = self.lm.finish(state)
        return total + s, scored + 1, oov


def perplexity(lm_dir: Path, text: Path) -> dict:
    """Perplexity of the LM dir's model on a Kaldi text file (``utt w1 w2 ...``; a data dir means its ``text``).

    OOV words are counted and left out of the perplexity (SRILM's ``ppl``: </s> counts as a token).
    """
    lm = load_lm_dir(lm_dir)
    text = Path(text)
    if text.is_dir():
        text = text / "text"
    if not text.is_file():
        raise SslseqError(f"{text}: Kaldi text file to compute the perplexity on not found")
    from sslseq.data.text import normalize_for

    normalize = normalize_for(lm.units)  # the LM's own units: a corpus's letters stay
    scorer = _ArpaScorer(lm.arpa, list(lm.lexicon))
    logp, tokens, oov, words, sents = 0.0, 0, 0, 0, 0
    for line in text.read_text(encoding="utf-8").splitlines():
        parts = line.split(maxsplit=1)
        ws = normalize(parts[1]).split() if len(parts) == 2 else []
        if not ws:
            continue
        lp, n, o = scorer.sentence(ws)
        logp, tokens, oov, words, sents = logp + lp, tokens + n, oov + o, words + len(ws), sents + 1
    if not sents:
        raise SslseqError(f"{text}: no sentences to compute the perplexity on")
    return {"text": str(text), "sentences": sents, "words": words, "oov": oov,
            "oov_rate": round(100.0 * oov / words, 3), "logprob10": round(logp, 3),
            "ppl": round(10 ** (-logp / tokens), 3)}


def _arpa_counts(arpa: Path) -> list[int]:
    """The n-gram count per order from an ARPA's \\data\\ header."""
    counts: list[int] = []
    with open(arpa, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ngram "):
                counts.append(int(line.split("=")[1]))
            elif counts and not line.strip():
                break
    if not counts:
        raise SslseqError(f"{arpa}: no '\\data\\' header with 'ngram N=count' lines: not an ARPA file")
    return counts


def _copy_arpa(arpa: Path, out: Path) -> list[int]:
    counts = _arpa_counts(arpa)
    with atomic_path(out) as tmp:
        shutil.copyfile(arpa, tmp)
    return counts


def build_lm(text: Path, out_dir: Path, *, order: int = 3, dev_text: Path | None = None, units: Path | None = None,
             arpa: Path | None = None) -> dict:
    """Train the ARPA of ``text`` (or take the given ``arpa``, e.g. LibriSpeech's official 4-gram),
    write its lexicon, units and ``lm.yaml``; returns ``lm.yaml``'s content."""
    text, out_dir = Path(text), Path(out_dir)
    if arpa is not None:
        order = len(_arpa_counts(Path(arpa)))
    if not 1 <= order <= MAX_ORDER:
        raise SslseqError(f"--order must be 1..{MAX_ORDER} (kaldingram's range), got {order}")
    tokenizer = load_tokenizer(units)
    lines = read_text_lines(text, tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INFO).unlink(missing_ok=True)  # the dir is incomplete until lm.yaml is back
    t0 = time.perf_counter()
    ngrams = _train_arpa(lines, order, out_dir / ARPA) if arpa is None else _copy_arpa(Path(arpa), out_dir / ARPA)
    train_s = time.perf_counter() - t0
    words = arpa_vocab(out_dir / ARPA)
    write_lexicon(words, tokenizer, out_dir / LEXICON)
    tokenizer.save(out_dir / UNITS)
    info = {
        "text": str(text),
        "text_sha256": file_sha256(text),
        "order": order,
        "smoothing": "back-off Kneser-Ney, unmodified (kaldingram = SRILM -ukndiscount), log10" if arpa is None
        else f"given ARPA {arpa} (not trained here)",
        "lines": len(lines),
        "words": sum(len(x.split()) for x in lines),
        "vocab": len(words),
        "ngrams": {n + 1: c for n, c in enumerate(ngrams)},
        "train_seconds": round(train_s, 2),
        "files": {name: {"bytes": (out_dir / name).stat().st_size, "sha256": file_sha256(out_dir / name)}
                  for name in (ARPA, LEXICON, UNITS)},
    }
    atomic_write_text(out_dir / INFO, yaml.safe_dump(info, sort_keys=False))
    if dev_text is not None:
        info["dev"] = perplexity(out_dir, Path(dev_text))
        atomic_write_text(out_dir / INFO, yaml.safe_dump(info, sort_keys=False))
    log.info("%s: %d-gram ARPA of %d words, vocab %d, n-grams %s (%.1f s)%s", out_dir, order, info["words"],
             len(words), ngrams, train_s,
             "" if dev_text is None else f"; dev perplexity {info['dev']['ppl']} ({info['dev']['oov_rate']}% OOV)")
    return info


@dataclass
class LmDir:
    path: Path
    arpa: Path
    lexicon: dict[str, list[str]]
    units: list[str]
    info: dict

    @property
    def id(self) -> str:
        """Changes whenever the LM is rebuilt differently (the ARPA's hash)."""
        return str(self.info["files"][ARPA]["sha256"])[:16]


def load_lm_dir(lm_dir: Path) -> LmDir:
    """The LM dir's files, checked against ``lm.yaml``."""
    lm_dir = Path(lm_dir)
    info_path = lm_dir / INFO
    if not lm_dir.is_dir():
        raise SslseqError(f"{lm_dir}: LM dir not found; build it with 'sslseq lm build TEXT {lm_dir}' (recipe stage 1)")
    if not info_path.is_file():
        raise SslseqError(f"{info_path}: not found, so {lm_dir} is not a complete LM dir; rerun 'sslseq lm build TEXT {lm_dir}'")
    info = yaml.safe_load(info_path.read_text(encoding="utf-8")) or {}
    for name, meta in (info.get("files") or {}).items():
        path = lm_dir / name
        if not path.is_file() or path.stat().st_size != meta.get("bytes"):
            raise SslseqError(f"{path}: missing or not the file {info_path} describes; rerun 'sslseq lm build TEXT {lm_dir}'")
    if set(info.get("files") or {}) != {ARPA, LEXICON, UNITS}:
        raise SslseqError(f"{info_path}: does not list {ARPA}, {LEXICON} and {UNITS}; rerun 'sslseq lm build TEXT {lm_dir}'")
    units = read_units(lm_dir / UNITS)
    return LmDir(lm_dir, lm_dir / ARPA, read_lexicon(lm_dir / LEXICON), units, info)


def check_lexicon_units(lm: LmDir, tokenizer: Tokenizer, where: Path) -> None:
    """Every unit of the lexicon's spellings must be a unit of the model (``where``: its units file)."""
    have = set(tokenizer.units)
    for word, spelling in lm.lexicon.items():
        missing = [u for u in spelling if u not in have]
        if missing:
            raise SslseqError(
                f"{lm.path / LEXICON}: {word} is spelled with {missing}, which {where} does not have; "
                f"build the LM with the model's units (sslseq lm build --units {where})"
            )
