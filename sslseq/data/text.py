"""Text normalization and the unit sets of CTC fine-tuning.

Characters (the default): letters plus apostrophe, with ``<blank>`` (id 0) for CTC and ``|`` for
a word boundary (fairseq letter-target convention); a units file lists them. BPE (``--units
bpe500``): the pieces of a SentencePiece model (``bpe.model``) within words, ``|`` between them,
``<blank>`` first. ``load_tokenizer`` picks one by the file.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from pathlib import Path
from typing import Callable

from sslseq.utils import SslseqError, atomic_write_text

BLANK = "<blank>"
WORD_SEP = "|"
DEFAULT_UNITS: list[str] = [BLANK, WORD_SEP, "'", *string.ascii_uppercase]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_KEPT = re.compile(r"[^A-Z' ]+")
# An apostrophe is kept inside a word (DON'T) or after a plural S (SAINTS'); elsewhere it is
# a quote mark and goes.
_LOOSE_APOSTROPHE = re.compile(r"(?<![A-Z])'+|(?<!S)'+(?![A-Z])|(?<=S)''+(?![A-Z])")
_SPACES = re.compile(r" +")


def normalize_text(s: str) -> str:
    """Upper-case A-Z, apostrophe and single spaces; everything else becomes a space.

    Accented letters lose their accent (CAFÉ -> CAFE). Digits are NOT spelled out: they
    are dropped like punctuation, so spell numbers out beforehand if they are spoken.
    Apostrophes stay inside words (IT'S) and after a final S (SAINTS'), not as quotes.
    """
    s = unicodedata.normalize("NFKD", s.translate(_APOSTROPHES))
    s = "".join(c for c in s if not unicodedata.combining(c)).upper()
    s = _NOT_KEPT.sub(" ", s)
    s = _LOOSE_APOSTROPHE.sub(" ", s)
    return _SPACES.sub(" ", s).strip()


def read_units(path: str | os.PathLike) -> list[str]:
    """The units of a units file (UTF-8, one a line, the first ``<blank>``), not yet checked."""
    path = Path(path)
    if not path.is_file():
        raise SslseqError(f"{path}: units file not found (one unit per line, first '{BLANK}')")
    raw = path.read_bytes()
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte order mark is not a unit
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        no = raw[:at].count(b"\n") + 1
        raise SslseqError(f"{path}:{no}: invalid UTF-8: byte 0x{raw[at]:02X} at byte offset {at} of the "
                          "file; a units file must be UTF-8: convert it (e.g. 'iconv -f latin1 -t utf-8')") from None
    units = []
    for no, line in enumerate(text.splitlines(), 1):
        unit = line.strip()
        if not unit:
            raise SslseqError(f"{path}:{no}: empty line in units file; remove it")
        units.append(unit)
    return units


def _upper1(c: str) -> str:
    """``c`` upper-cased where its capital is one letter (so German ß stays ß, not SS)."""
    u = c.upper()
    return u if len(u) == 1 else c


def normalize_letters(s: str) -> str:
    """A language-neutral normalization for a corpus whose units are its own letters.

    NFKC (full-width and compatibility forms folded), letters upper-cased where they have a
    one-letter capital; letters of any script (Unicode L*) and their combining marks (M*) are
    kept, accents included (ÉTÉ stays ÉTÉ); an apostrophe only inside a word; digits,
    punctuation and symbols become spaces, as in ``normalize_text``.
    """
    s = unicodedata.normalize("NFKC", s.translate(_APOSTROPHES))
    kept = "".join(_upper1(c) if unicodedata.category(c)[0] in "LM" else ("'" if c == "'" else " ") for c in s)
    words = (re.sub("'+", "'", w.strip("'")) for w in kept.split())
    return " ".join(w for w in words if w)


def normalize_for(units: list[str]) -> Callable[[str], str]:
    """The normalization of transcripts for a unit set: ``normalize_text`` (English, A-Z) for the
    default units, ``normalize_letters`` for any other (a corpus's own letters, e.g. ``sslseq
    corpus custom``'s ``units.txt``), so references, LM text and hypotheses agree."""
    return normalize_text if list(units) == DEFAULT_UNITS else normalize_letters


class CharTokenizer:
    """Maps normalized text to unit ids and back; a space is the ``|`` unit."""

    blank_id = 0
    kind = "chars"
    sil_unit = WORD_SEP  # the unit a lexicon search treats as silence between words

    def __init__(self, units: list[str]):
        units = list(units)
        if not units or units[0] != BLANK:
            raise SslseqError(f"unit list must start with '{BLANK}' (CTC blank, id 0); got {units[:3]}")
        if WORD_SEP not in units:
            raise SslseqError(f"unit list must contain the word boundary unit '{WORD_SEP}'")
        seen: set[str] = set()
        for u in units:
            if u in seen:
                raise SslseqError(f"unit '{u}' appears twice in the unit list")
            if not u or any(c.isspace() for c in u):
                raise SslseqError(f"unit {u!r} is empty or contains whitespace")
            if len(u) > 1 and u != BLANK:  # encode() reads text a character at a time
                raise SslseqError(f"unit {u!r} is not one character; the units of BPE pieces are read from their "
                                  f"SentencePiece model (data.units=DIR/{BPE_MODEL}, not DIR/units.txt)")
            seen.add(u)
        self.units = units
        self._ids = {u: i for i, u in enumerate(units)}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "CharTokenizer":
        units = read_units(path)
        try:
            return cls(units)
        except SslseqError as e:
            raise SslseqError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, "".join(f"{u}\n" for u in self.units))

    def __len__(self) -> int:
        return len(self.units)

    def check_text(self, text: str) -> list[str]:
        """Characters of ``text`` that have no unit (each once, in order of appearance)."""
        bad: list[str] = []
        for c in text:
            if c == " ":
                c = WORD_SEP
            if c not in self._ids and c not in bad:
                bad.append(c)
        return bad

    def unspellable(self, word: str) -> list[str]:
        """Characters of ``word`` that a lexicon cannot spell in these units."""
        return [c for c in word if c in (WORD_SEP, BLANK) or c not in self._ids]

    def spell(self, word: str) -> list[str]:
        """A lexicon's spelling of ``word``: its letters, then the word boundary."""
        return [*word, WORD_SEP]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for n, word in enumerate(text.split()):
            if n:
                ids.append(self._ids[WORD_SEP])
            for c in word:
                i = self._ids.get(c)
                if i is None:
                    raise SslseqError(
                        f"character {c!r} (U+{ord(c):04X}) in {text!r} is not in the unit set; "
                        "normalize the text (sslseq.data.text.normalize_text) or add it to the units file"
                    )
                ids.append(i)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of already CTC-collapsed ids: blanks dropped, ``|`` becomes a space."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.blank_id:
                continue
            if not 0 <= i < len(self.units):
                raise SslseqError(f"unit id {i} is outside 0..{len(self.units) - 1}: model and units file disagree")
            u = self.units[i]
            out.append(" " if u == WORD_SEP else u)
        return _SPACES.sub(" ", "".join(out)).strip()


BPE_MODEL = "bpe.model"  # the SentencePiece model beside a units.txt of pieces


class PieceTokenizer:
    """SentencePiece (BPE) pieces within words, ``|`` between them, as characters are: id 0 is
    ``<blank>``, 1 ``|``, i + 2 the model's piece i.

    The model is learnt from one word a line (``train_bpe``), so no piece spans a word boundary
    and none carries SentencePiece's ``▁`` marker. A lexicon spells a word as its pieces and ``|``,
    like a letter lexicon: flashlight's search then ends every word on ``|``, never on a piece
    that could also start the next word (with ``▁`` pieces it emits a one-piece word again on each
    repeated frame of that piece)."""

    blank_id = 0
    kind = "bpe"
    sil_unit = WORD_SEP

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise SslseqError(f"{self.model_path}: SentencePiece model not found; learn it with "
                              "'sslseq data bpe --vocab-size N DATA_DIR OUT_DIR'")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except (RuntimeError, OSError) as e:
            raise SslseqError(f"{self.model_path}: not a SentencePiece model ({e}); learn it again") from None
        pieces = [self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())]
        self.units = [BLANK, WORD_SEP] + pieces
        if len(set(self.units)) != len(self.units):
            raise SslseqError(f"{self.model_path}: a piece is spelled '{BLANK}', '{WORD_SEP}' or twice; learn the "
                              "model again (sslseq data bpe)")
        self._chars = {c for i, p in enumerate(pieces) if not (self.sp.is_control(i) or self.sp.is_unknown(i))
                       for c in p}

    def save(self, path: str | os.PathLike) -> None:
        """The units file (``<blank>``, ``|``, the pieces); the model file stays where it is."""
        atomic_write_text(path, "".join(f"{u}\n" for u in self.units))

    def __len__(self) -> int:
        return len(self.units)

    def check_text(self, text: str) -> list[str]:
        """Characters of ``text`` that no piece holds (each once, in order of appearance)."""
        return list(dict.fromkeys(c for c in text if c != " " and c not in self._chars))

    def unspellable(self, word: str) -> list[str]:
        return self.check_text(word)

    def spell(self, word: str) -> list[str]:
        """A lexicon's spelling of ``word``: the pieces SentencePiece cuts it into, then ``|``."""
        return [*self.sp.encode(word, out_type=str), WORD_SEP]

    def encode(self, text: str) -> list[int]:
        bad = self.check_text(text)
        if bad:
            raise SslseqError(
                f"character(s) {''.join(bad)!r} in {text!r} are in no piece of {self.model_path}; normalize the "
                "text (sslseq.data.text.normalize_text) or learn the BPE model from text that has them"
            )
        ids: list[int] = []
        for n, word in enumerate(text.split()):
            if n:
                ids.append(1)
            ids += [i + 2 for i in self.sp.encode(word)]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of already CTC-collapsed ids: blanks dropped, the pieces of each word joined."""
        words: list[list[int]] = [[]]
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.units):
                raise SslseqError(f"unit id {i} is outside 0..{len(self.units) - 1}: model and {self.model_path} disagree")
            if i == 1:
                words.append([])
            elif i != self.blank_id:
                words[-1].append(i - 2)
        return " ".join(w for w in (self.sp.decode(x) for x in words if x) if w)


Tokenizer = CharTokenizer | PieceTokenizer


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """The units of ``path``: a SentencePiece ``*.model`` (BPE), a units file (characters), or
    None (the default characters)."""
    if path is None:
        return CharTokenizer(DEFAULT_UNITS)
    if Path(path).suffix == ".model":
        return PieceTokenizer(path)
    return CharTokenizer.from_file(path)


def train_bpe(text: str | os.PathLike, out_dir: str | os.PathLike, vocab_size: int) -> Path:
    """Learn a SentencePiece BPE model of ``vocab_size`` pieces from the words of a Kaldi ``text``
    file (``<utt> <words>`` lines; one word a line, so that pieces stay within words); writes
    ``OUT_DIR/bpe.model`` and ``OUT_DIR/units.txt`` (atomically, the model last) and returns the
    model's path."""
    import tempfile

    import sentencepiece as spm

    text, out_dir = Path(text), Path(out_dir)
    if not text.is_file():
        raise SslseqError(f"{text}: not found; BPE units are learnt from a data dir's transcripts")
    lines = [w for line in text.read_text(encoding="utf-8").splitlines() for w in line.split()[1:]]
    if not lines:
        raise SslseqError(f"{text}: no transcripts to learn BPE units from")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".bpe_") as tmp:
        (Path(tmp) / "text").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
        try:
            spm.SentencePieceTrainer.train(
                input=str(Path(tmp) / "text"), model_prefix=str(Path(tmp) / "bpe"), vocab_size=vocab_size,
                model_type="bpe", character_coverage=1.0, normalization_rule_name="identity",
                add_dummy_prefix=False, bos_id=-1, eos_id=-1, unk_id=0, num_threads=2, minloglevel=2,
                input_sentence_size=5_000_000, shuffle_input_sentence=True,
            )
        except RuntimeError as e:
            raise SslseqError(f"{text}: SentencePiece cannot learn {vocab_size} BPE pieces from {len(lines)} "
                              f"words ({str(e).strip().splitlines()[-1]}); choose a smaller --units bpeN") from None
        tokenizer = PieceTokenizer(Path(tmp) / "bpe.model")
        tokenizer.save(out_dir / "units.txt")
        os.replace(Path(tmp) / "bpe.model", out_dir / BPE_MODEL)
    return out_dir / BPE_MODEL
