"""Lexicon beam search with a word n-gram LM over cached CTC emissions (flashlight-text).

flashlight's ``LexiconDecoder`` walks a trie of the lexicon's spellings (``WORD W O R D |``),
so every hypothesis is a sequence of LM words; a word's LM log10 probability (KenLM over the
ARPA) is added, times ``lm_weight``, when its last unit is emitted, plus ``word_score`` per
word. The trie is smeared with each word's unigram score so that partial words are ranked by
the best word they can still become (the look-ahead is taken back when the word ends).

Our units put ``|`` *between* words only (``sslseq.data.text``), while a letter lexicon ends
every word with it: each utterance gets one extra frame in which ``|`` has probability 1,
which ends the last word and costs nothing otherwise (a hypothesis already at a word
boundary stays there).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sslseq.data.text import BLANK, Tokenizer
from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

UNK = "<unk>"
LM_SUBDIR = "lm"  # LM results of a decode dir: OUT/lm/{hyp.txt,wer,wer.yaml,errs,decode.yaml}
_IMPOSSIBLE = -1e4  # log prob of the other units in the extra final frame


@dataclass
class LmParams:
    """The search's settings; ``lm_weight`` scales log10 LM probabilities, ``word_score`` is per word."""

    lm_weight: float = 1.0
    word_score: float = 0.0
    beam_size: int = 50
    beam_threshold: float = 25.0  # drop hypotheses this far (nats) below the frame's best
    beam_size_token: int | None = None  # units tried per frame (None: all)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_yaml(cls, path: Path) -> "LmParams":
        path = Path(path)
        if not path.is_file():
            raise SslseqError(f"{path}: LM parameters not found; tune them with 'sslseq lm tune DECODE_DIR --lm LM_DIR'")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        params = data.get("params", data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise SslseqError(f"{path}: unknown LM parameter(s) {unknown}; known: {sorted(names)}")
        return cls(**params)

    @classmethod
    def resolve(cls, params_file: Path | None = None, **overrides: Any) -> "LmParams":
        """The parameters of ``params_file`` (or the defaults), with the ``overrides`` that are not None."""
        base = cls.from_yaml(params_file) if params_file is not None else cls()
        params = dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
        params.check()
        return params

    def check(self) -> None:
        if self.beam_size < 1:
            raise SslseqError(f"--beam-size must be >= 1, got {self.beam_size}")
        if self.beam_threshold <= 0:
            raise SslseqError(f"beam_threshold must be positive, got {self.beam_threshold}")


class LexiconSearch:
    """The LM, word dictionary and lexicon trie of an LM dir, built once for many searches."""

    def __init__(self, lm_dir: Path, tokenizer: Tokenizer, units_path: Path | str = "units.txt"):
        from flashlight.lib.text.decoder import SmearingMode, Trie

        from sslseq.lm.ngram import check_lexicon_units, load_kenlm, load_lm_dir

        self.lm_dir = load_lm_dir(lm_dir)
        check_lexicon_units(self.lm_dir, tokenizer, Path(units_path))
        self.tokenizer = tokenizer
        self.num_units = len(tokenizer)
        ids = {u: i for i, u in enumerate(tokenizer.units)}
        self.blank = ids[BLANK]
        self.sep = ids[tokenizer.sil_unit]  # '|' for characters, <unk> for BPE pieces
        self.lm, self.words = load_kenlm(self.lm_dir.arpa, list(self.lm_dir.lexicon))
        self.unk = self.words.get_index(UNK)
        self.trie = Trie(self.num_units, self.sep)
        start = self.lm.start(False)
        for w, spelling in self.lm_dir.lexicon.items():
            wi = self.words.get_index(w)
            _, unigram = self.lm.score(start, wi)
            self.trie.insert([ids[u] for u in spelling], wi, unigram)
        self.trie.smear(SmearingMode.MAX)

    def decoder(self, params: LmParams):
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions

        params.check()
        opts = LexiconDecoderOptions(
            beam_size=int(params.beam_size),
            beam_size_token=int(params.beam_size_token or self.num_units),
            beam_threshold=float(params.beam_threshold),
            lm_weight=float(params.lm_weight),
            word_score=float(params.word_score),
            unk_score=float("-inf"),  # only lexicon words
            sil_score=0.0,
            log_add=False,
            criterion_type=CriterionType.CTC,
        )
        return LexiconDecoder(opts, self.trie, self.lm, self.sep, self.blank, self.unk, [], False)

    def with_final_separator(self, emission: np.ndarray) -> np.ndarray:
        """(T + 1, V) float32, C-contiguous: ``emission`` and a frame that emits ``|`` for sure."""
        T, V = emission.shape
        if V != self.num_units:
            raise SslseqError(f"emissions have {V} units but the model's units file lists {self.num_units}")
        out = np.empty((T + 1, V), dtype=np.float32)
        out[:T] = emission
        out[T] = _IMPOSSIBLE
        out[T, self.sep] = 0.0
        return out

    def decode(self, decoder, emission: np.ndarray) -> list[str]:
        """The best word sequence of one utterance's (T, V) log-probs."""
        em = self.with_final_separator(np.asarray(emission, dtype=np.float32))
        results = decoder.decode(em.ctypes.data, em.shape[0], em.shape[1])
        if not results:
            return []
        return [self.words.get_entry(i) for i in results[0].words if i >= 0]


def decode_emissions(search: LexiconSearch, emissions: dict[str, np.ndarray], utts: list[str],
                     params: LmParams) -> tuple[dict[str, str], float]:
    """Hypotheses of ``utts`` and the seconds the search took."""
    decoder = search.decoder(params)
    t0 = time.perf_counter()
    hyps = {u: " ".join(search.decode(decoder, emissions[u])) for u in utts}
    return hyps, time.perf_counter() - t0


def write_lm_results(out_dir: Path, utts: list[str], hyps: dict[str, str], ref: Path | None, info: dict):
    """``hyp.txt``, ``decode.yaml`` and, with a reference, the scores, in the layout of a greedy decode dir."""
    from sslseq.asr.score import score_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hyp_path = out_dir / "hyp.txt"
    atomic_write_text(hyp_path, "".join(f"{u} {hyps[u]}".rstrip() + "\n" for u in utts))
    atomic_write_text(out_dir / "decode.yaml", yaml.safe_dump(info, sort_keys=False))
    if ref is None:
        return None
    return score_files(ref, hyp_path, out_dir)
