#!/usr/bin/env python3
"""The embedded corpus: King James Bible sentences read by espeak-ng voices (synth_en's stages 0-1).

    local/synth_corpus.py synth [--hours H] [--tiny] [--seed S] [--nj N] CORPUS_DIR
    local/synth_corpus.py prepare CORPUS_DIR DATA_DIR     # Kaldi data dirs train/dev/test
    local/synth_corpus.py lm-text --exclude DATA_DIR ... [--books BOOK ...] OUT

This corpus's own preparation, as a Kaldi recipe's local/ holds it (the package has no
synthesis: no other corpus uses it); it writes through sslseq's data-dir and text helpers.

Everything is derived from the seed: the speaker table (voice, variant, pitch, rate, room),
which speakers and sentences go to train/dev/test (disjoint), and per-utterance noise.
Utterance ``k`` of a split is the same whatever ``hours`` is, so asking for more hours in an
existing dir only adds utterances.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import shutil
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from sslseq.data.kaldi import write_data_dir
from sslseq.data.text import normalize_text
from sslseq.utils import SslseqError, atomic_path, atomic_write_text, get_logger, progress, run_main

log = get_logger("sslseq.synth_en")

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
SPLIT_FRACTION = {"train": 0.8, "dev": 0.1, "test": 0.1}  # of the sentences; of the audio in a tiny corpus
EVAL_SECONDS = 1080.0  # dev and test: 0.3 h each whatever the size of train, so results stay comparable
NUM_SPEAKERS = 48
SPLIT_SPEAKERS = {"train": 38, "dev": 5, "test": 5}
TINY_SPEAKERS = {"train": 12, "dev": 2, "test": 2}
TINY_SECONDS = 240.0
MIN_WORDS, MAX_WORDS = 4, 20
CORPUS_TSV = "corpus.tsv"
SPEAKERS_TSV = "speakers.tsv"
PARAMS_YAML = "synth.yaml"
TSV_FIELDS = ["utt", "spk", "split", "duration", "text", "wav"]
FORMAT_VERSION = 1

# Book name and a verse range past its end (bible-kjv clips it).
BOOKS = [
    "Genesis", "Exodus", "Ruth", "Job", "Psalms", "Proverbs", "Ecclesiastes", "Isaiah",
    "Matthew", "Mark", "Luke", "John", "Acts", "Romans",
]
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"]
MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "klatt", "klatt2", "klatt3", "adam", "david", "paul"]
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4", "f5", "Annie", "linda", "belinda", "steph"]
# Measured on this corpus: seconds ~= pause + words * 60 / wpm * stretch.
_EST_PAUSE_S, _EST_STRETCH = 0.5, 0.77


@dataclass(frozen=True)
class Speaker:
    spk: str
    split: str
    voice: str
    variant: str
    pitch: int
    rate: int
    rt60: float  # 0: no reverberation


@dataclass(frozen=True)
class Utterance:
    utt: str
    spk: str
    split: str
    text: str  # normalized transcript
    spoken: str  # what espeak-ng reads (keeps commas for phrasing)

    @property
    def rel_wav(self) -> str:
        return f"wav/{self.spk}/{self.utt}.wav"


# ---------------------------------------------------------------- sentences


# The whole KJV, Genesis to Revelation, as one verse range of the 'bible' program.
ALL_BOOKS = "Genesis1:1-Revelation22:21"


def _bible_verses(spec: str) -> list[str]:
    """Verse texts of a 'bible' range such as ``Genesis1:1-999:999`` (chapter headings dropped)."""
    exe = shutil.which("bible")
    if exe is None:
        raise SslseqError("the 'bible' command (King James Bible text) is not installed; install it: apt-get install bible-kjv")
    res = subprocess.run([exe, "-l100000", spec], capture_output=True, text=True, check=False)
    if res.returncode != 0 or res.stdout.startswith("Bad"):
        raise SslseqError(f"'bible' could not print {spec}: {res.stdout.strip() or res.stderr.strip()}; reinstall bible-kjv")
    # Verses are indented ("  3 And God said, ..."); headings are not ("1 Samuel 3").
    return [m.group(1) for m in re.finditer(r"^[ \t]+\d+[ \t]+(.+?)[ \t]*$", res.stdout, re.MULTILINE)]


def _bible_book(book: str) -> list[str]:
    return _bible_verses(f"{book}1:1-999:999")


def _split_long(words: list[str]) -> list[list[str]]:
    """Split at the comma nearest the middle until every piece has <= MAX_WORDS words."""
    if len(words) <= MAX_WORDS:
        return [words]
    commas = [i + 1 for i, w in enumerate(words[:-1]) if w.endswith(",")]
    if not commas:
        return []
    cut = min(commas, key=lambda i: abs(i - len(words) / 2))
    return _split_long(words[:cut]) + _split_long(words[cut:])


def _verse_sentences(verse: str) -> list[str]:
    pieces = [p.split() for p in re.split(r"[;:.?!]", verse)]
    pieces = [p for p in pieces if p]
    merged: list[list[str]] = []
    carry: list[str] = []
    for p in pieces:  # a short clause joins the next one ("Selah" and such)
        p = carry + p
        carry = []
        if len(p) < MIN_WORDS:
            carry = p
        else:
            merged.append(p)
    if carry and merged and len(merged[-1]) + len(carry) <= MAX_WORDS:
        merged[-1] = merged[-1] + carry
    out = []
    for p in merged:
        for q in _split_long(p):
            if len(q) >= MIN_WORDS:
                out.append(" ".join(q).rstrip(","))
    return out


def load_sentences() -> list[str]:
    """Raw KJV clauses of 4-20 words, no digits, unique after normalization, in book order."""
    return list(_load_sentences())


@functools.lru_cache(maxsize=1)
def _load_sentences() -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for book in BOOKS:
        for verse in _bible_book(book):
            for s in _verse_sentences(verse):
                if re.search(r"\d", s):
                    continue
                norm = normalize_text(s)
                n = len(norm.split())
                if n < MIN_WORDS or n > MAX_WORDS or norm in seen:
                    continue
                seen.add(norm)
                out.append(s)
    return tuple(out)


def lm_sentences(books: list[str] | None = None) -> list[str]:
    """Normalized KJV clauses for a language model: every verse of ``books`` (default the whole
    Bible), cut into clauses exactly as the corpus's sentences are (so a dev or test sentence
    appears as a whole line, which ``sslseq.lm.corpus`` can exclude), repeats kept (they are
    the text's real frequencies)."""
    specs = [ALL_BOOKS] if not books else [f"{b}1:1-999:999" for b in books]
    out: list[str] = []
    for spec in specs:
        for verse in _bible_verses(spec):
            out += [n for n in (normalize_text(s) for s in _verse_sentences(verse)) if n]
    return out


def spoken_form(raw: str) -> str:
    """Text for espeak-ng: letters, apostrophes and commas; LORD -> Lord so it is not spelled out."""
    s = re.sub(r"[^A-Za-z' ,]", " ", raw)
    words = [w.capitalize() if len(w) > 1 and w.isupper() else w for w in s.split()]
    return " ".join(words).strip(" ,") + "."


# ---------------------------------------------------------------- speakers and plan


def speaker_table(seed: int) -> list[Speaker]:
    """NUM_SPEAKERS distinct (voice, variant) speakers with seeded pitch, rate, room and split."""
    rng = np.random.default_rng([seed, 1])
    combos = [(v, var, "m") for v in VOICES for var in MALE_VARIANTS] + [(v, var, "f") for v in VOICES for var in FEMALE_VARIANTS]
    picked = [combos[i] for i in rng.permutation(len(combos))[:NUM_SPEAKERS]]
    splits = [s for s in SPLITS for _ in range(SPLIT_SPEAKERS[s])]
    splits = [splits[i] for i in rng.permutation(len(splits))]
    table = []
    for n, ((voice, variant, gender), split) in enumerate(zip(picked, splits)):
        pitch = int(rng.integers(25, 61) if gender == "m" else rng.integers(45, 81))
        rate = int(rng.integers(130, 191))
        rt60 = 0.0 if rng.random() < 0.35 else round(float(rng.uniform(0.12, 0.35)), 3)
        table.append(Speaker(f"spk{n:03d}", split, voice, variant, pitch, rate, rt60))
    return table


def _split_speakers(table: list[Speaker], tiny: bool) -> dict[str, list[Speaker]]:
    counts = TINY_SPEAKERS if tiny else SPLIT_SPEAKERS
    return {s: [sp for sp in table if sp.split == s][: counts[s]] for s in SPLITS}


def _sentence_pools(sentences: list[str], seed: int) -> dict[str, list[str]]:
    """Disjoint sentence pools per split, fixed fractions so they do not depend on hours."""
    order = np.random.default_rng([seed, 2]).permutation(len(sentences))
    n_dev = int(len(sentences) * SPLIT_FRACTION["dev"])
    n_test = int(len(sentences) * SPLIT_FRACTION["test"])
    idx = {"dev": order[:n_dev], "test": order[n_dev : n_dev + n_test], "train": order[n_dev + n_test :]}
    return {s: [sentences[i] for i in idx[s]] for s in SPLITS}


def estimate_seconds(text: str, rate: int) -> float:
    return _EST_PAUSE_S + len(text.split()) * 60.0 / rate * _EST_STRETCH


def split_seconds(hours: float, tiny: bool) -> dict[str, float]:
    """Audio to synthesize per split: ``hours`` of train and 0.3 h each of dev and test
    (tiny: TINY_SECONDS in all, split as the sentences)."""
    if tiny:
        return {s: TINY_SECONDS * SPLIT_FRACTION[s] for s in SPLITS}
    return {"train": hours * 3600.0, "dev": EVAL_SECONDS, "test": EVAL_SECONDS}


def plan_corpus(seconds: dict[str, float], seed: int, tiny: bool, sentences: list[str]) -> tuple[list[Speaker], list[Utterance]]:
    """Speaker table and the utterances to synthesize, by estimated duration per split."""
    table = speaker_table(seed)
    speakers = _split_speakers(table, tiny)
    pools = _sentence_pools(sentences, seed)
    utts: list[Utterance] = []
    for split in SPLITS:
        spks, pool = speakers[split], pools[split]
        target = seconds[split]
        acc, k = 0.0, 0
        # Round-robin over speakers; every speaker gets at least one utterance.
        while acc < target or k < len(spks):
            sp, raw = spks[k % len(spks)], pool[k % len(pool)]
            text = normalize_text(raw)
            utts.append(Utterance(f"{sp.spk}-{split[:2]}{k:06d}", sp.spk, split, text, spoken_form(raw)))
            acc += estimate_seconds(text, sp.rate)
            k += 1
    return table, utts


# ---------------------------------------------------------------- audio


def _espeak(sp: Speaker, text: str, utt: str) -> tuple[np.ndarray, int]:
    cmd = ["espeak-ng", "-v", f"{sp.voice}+{sp.variant}", "-p", str(sp.pitch), "-s", str(sp.rate), "--stdout", text]
    res = subprocess.run(cmd, capture_output=True, check=False)
    if res.returncode != 0 or not res.stdout:
        raise SslseqError(f"{utt}: espeak-ng failed ({' '.join(cmd[:-1])}): {res.stderr.decode(errors='replace').strip()}")
    x, sr = sf.read(io.BytesIO(res.stdout), dtype="float32")
    return x, int(sr)


def room_response(sp: Speaker, seed: int) -> np.ndarray | None:
    """A short exponential-decay impulse response (fixed per speaker), direct path first."""
    if sp.rt60 <= 0:
        return None
    rng = np.random.default_rng([seed, 3, int(sp.spk[3:])])
    n = int(sp.rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / sp.rt60)  # -60 dB at rt60
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0  # reflections arrive after the direct sound
    drr_db = 10.0  # mild: direct sound 10 dB above the reverberant energy
    tail *= 1.0 / np.sqrt(np.sum(tail**2) * 10 ** (drr_db / 10))
    tail[0] = 1.0
    return tail.astype(np.float32)


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:n]
    return y.astype(np.float32)


def render_utterance(u: Utterance, sp: Speaker, seed: int) -> np.ndarray:
    """The utterance's 16 kHz float32 audio: espeak-ng, resampled, room, noise, peak-normalized."""
    import soxr

    x, sr = _espeak(sp, u.spoken, u.utt)
    x = soxr.resample(x, sr, SAMPLE_RATE, quality="HQ").astype(np.float32)
    h = room_response(sp, seed)
    if h is not None:
        x = _convolve(x, h)
    rng = np.random.default_rng([seed, 4, zlib.crc32(u.utt.encode())])
    active = x[np.abs(x) > 0.05 * np.abs(x).max()]  # speech level, not diluted by silences
    rms = float(np.sqrt(np.mean(active**2))) if active.size else 1e-3
    snr_db = rng.uniform(30.0, 40.0)
    x = x + rng.standard_normal(len(x)).astype(np.float32) * np.float32(rms / 10 ** (snr_db / 20))
    peak = float(np.abs(x).max()) or 1.0
    return (x * np.float32(rng.uniform(0.5, 0.95) / peak)).astype(np.float32)


def _synth_one(out_dir: Path, u: Utterance, sp: Speaker, seed: int) -> float:
    path = out_dir / u.rel_wav
    if path.exists():  # resumed run: written atomically, so complete
        return sf.info(str(path)).frames / SAMPLE_RATE
    x = render_utterance(u, sp, seed)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(x) / SAMPLE_RATE


# ---------------------------------------------------------------- stage 0 / 1


def _check_params(out_dir: Path, seed: int, tiny: bool) -> None:
    params = {"version": FORMAT_VERSION, "seed": int(seed), "tiny": bool(tiny)}
    path = out_dir / PARAMS_YAML
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        if old != params:
            raise SslseqError(
                f"{path}: this dir was synthesized with {old}, now asked for {params}; "
                "use a new output dir (or delete this one) rather than mixing corpora"
            )
    else:
        atomic_write_text(path, yaml.safe_dump(params, sort_keys=True))


def synthesize_corpus(out_dir: Path, *, hours: float, seed: int, tiny: bool, nj: int) -> None:
    """Synthesize wav/<spk>/<utt>.wav and corpus.tsv (last); existing wavs are kept (resume)."""
    out_dir = Path(out_dir)
    if shutil.which("espeak-ng") is None:
        raise SslseqError("espeak-ng is not installed; install it: apt-get install espeak-ng")
    if nj < 1:
        raise SslseqError(f"--nj must be at least 1, got {nj}")
    if not tiny and hours <= 0:
        raise SslseqError(f"--hours must be positive, got {hours}")
    seconds = split_seconds(hours, tiny)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_params(out_dir, seed, tiny)
    table, utts = plan_corpus(seconds, seed, tiny, load_sentences())
    spk_by_id = {sp.spk: sp for sp in table}
    atomic_write_text(
        out_dir / SPEAKERS_TSV,
        "\t".join(Speaker.__dataclass_fields__) + "\n"
        + "".join("\t".join(str(v) for v in asdict(sp).values()) + "\n" for sp in table),
    )
    todo = sum(not (out_dir / u.rel_wav).exists() for u in utts)
    n_spk = len({u.spk for u in utts})
    log.info("%s: %d utterances planned (%d to synthesize) from %d speakers, nj=%d", out_dir, len(utts), todo, n_spk, nj)
    # espeak-ng runs as a subprocess and numpy/soxr release the GIL, so threads scale.
    pool = ThreadPoolExecutor(max_workers=nj)
    try:
        futures = [pool.submit(_synth_one, out_dir, u, spk_by_id[u.spk], seed) for u in utts]
        durations = [f.result() for f in progress(futures, desc="synthesize", total=len(utts), unit="utt")]
    finally:
        # On an error or Ctrl-C, drop the queued utterances instead of finishing them all.
        pool.shutdown(wait=True, cancel_futures=True)
    rows = [
        {"utt": u.utt, "spk": u.spk, "split": u.split, "duration": f"{d:.3f}", "text": u.text, "wav": u.rel_wav}
        for u, d in zip(utts, durations)
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TSV_FIELDS, delimiter="\t", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out_dir / CORPUS_TSV, buf.getvalue())
    for split in SPLITS:
        d = sum(dur for u, dur in zip(utts, durations) if u.split == split)
        n = sum(u.split == split for u in utts)
        log.info("%s: %s: %d utterances, %.1f s (%.2f h)", out_dir, split, n, d, d / 3600)


def read_corpus_tsv(corpus_dir: Path) -> list[dict[str, str]]:
    path = Path(corpus_dir) / CORPUS_TSV
    if not path.is_file():
        raise SslseqError(f"{path} not found: run 'local/synth_corpus.py synth {corpus_dir}' first (it writes corpus.tsv last)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames != TSV_FIELDS:
            raise SslseqError(f"{path}:1: header is {reader.fieldnames}, expected {TSV_FIELDS}; re-run 'local/synth_corpus.py synth'")
        rows = list(reader)
    for no, r in enumerate(rows, 2):
        if r["split"] not in SPLITS or None in r.values():
            raise SslseqError(f"{path}:{no}: {r.get('utt')}: malformed row; re-run 'local/synth_corpus.py synth'")
    return rows


def prepare_data_dirs(corpus_dir: Path, data_dir: Path) -> None:
    """Kaldi data dirs data_dir/{train,dev,test} (absolute wav paths) from corpus.tsv."""
    corpus_dir = Path(corpus_dir).resolve()
    rows = read_corpus_tsv(corpus_dir)
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        if not sel:
            raise SslseqError(f"{corpus_dir / CORPUS_TSV}: no '{split}' utterances; re-run 'local/synth_corpus.py synth'")
        wav = {}
        for r in sel:
            p = corpus_dir / r["wav"]
            if not p.is_file():
                raise SslseqError(f"{p}: listed in corpus.tsv ({r['utt']}) but missing; re-run 'local/synth_corpus.py synth' to redo it")
            wav[r["utt"]] = str(p)
        write_data_dir(
            Path(data_dir) / split,
            wav=wav,
            text={r["utt"]: r["text"] for r in sel},
            utt2spk={r["utt"]: r["spk"] for r in sel},
            utt2dur={r["utt"]: float(r["duration"]) for r in sel},
        )
        dur = sum(float(r["duration"]) for r in sel)
        n_spk = len({r["spk"] for r in sel})
        log.info("%s: %d utterances, %d speakers, %.1f s", Path(data_dir) / split, len(sel), n_spk, dur)


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="local/synth_corpus.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    s = verbs.add_parser("synth", help="synthesize the corpus with espeak-ng (resumes; more hours only adds audio)")
    s.add_argument("--hours", type=float, default=10.0, help="hours of train audio (dev and test: 0.3 h each)")
    s.add_argument("--tiny", action="store_true", help="a few minutes of audio, for tests")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--nj", type=int, default=2, help="parallel synthesis processes")
    s.add_argument("corpus_dir")
    s = verbs.add_parser("prepare", help="Kaldi data dirs (train/dev/test) from a synthesized corpus")
    s.add_argument("corpus_dir")
    s.add_argument("data_dir")
    s = verbs.add_parser("lm-text", help="normalised LM text of the corpus's source (the KJV), without any line "
                         "that is or contains a sentence of the --exclude data dirs")
    s.add_argument("--exclude", action="append", required=True, metavar="DATA_DIR",
                   help="a data dir whose sentences stay out (repeat it: --exclude data/dev --exclude data/test)")
    s.add_argument("--books", action="append", default=None, metavar="BOOK",
                   help="a KJV book to read, e.g. Genesis (repeatable; default: the whole Bible)")
    s.add_argument("out", help="text file to write (and OUT.yaml with the counts)")
    a = p.parse_args(argv)

    def run() -> None:
        if a.verb == "synth":
            synthesize_corpus(Path(a.corpus_dir), hours=a.hours, seed=a.seed, tiny=a.tiny, nj=a.nj)
        elif a.verb == "prepare":
            prepare_data_dirs(Path(a.corpus_dir), Path(a.data_dir))
        else:
            from sslseq.lm.corpus import write_lm_text

            write_lm_text(lm_sentences(a.books), Path(a.out), [Path(d) for d in a.exclude])

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
