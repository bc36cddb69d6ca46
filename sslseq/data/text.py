"""Text normalization and the character unit set used for CTC fine-tuning.

Units are letters plus apostrophe, with ``<blank>`` (id 0) for CTC and ``|`` for a word
boundary (fairseq letter-target convention).
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
            seen.add(u)
        self.units = units
        self._ids = {u: i for i, u in enumerate(units)}

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "CharTokenizer":
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
