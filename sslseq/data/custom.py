"""A user's own folder of audio (and maybe some transcripts) as Kaldi data dirs (egs/custom).

Every audio file under the folder (recursive; any format soundfile reads, any sample rate) is one
utterance: its id is its relative path (``spk1/sub/a.flac`` -> ``spk1-sub-a``; characters other
than letters, digits, ``.``, ``_``, ``-`` become ``_``), its speaker the name of the dir holding it
(``spk_from="dir"``) or the utterance itself (``"none"``, or a file directly in the folder).

Audio that is not 16 kHz mono is converted once into a 16 kHz mono WAV copy in the corpus dir
(stereo averaged, with a warning naming the file); 16 kHz mono files are used where they are.
Why copies rather than resampling when read: a downmix needs a copy anyway (every reader refuses
multi-channel audio), and so does nothing else then — training reads each utterance on every
epoch, and one conversion up front keeps resampling (and its warnings) out of every stage.

Transcripts (``text``): ``<file or utt id> <transcript>`` lines, matched by utt id, relative path
(with or without extension), file name or stem. They are normalised with
``sslseq.data.text.normalize_letters`` (the user's letters kept), and the CTC units are the
characters they use (``units.txt``), or a given units file they must fit.

Held out: ``dev`` (needed: pretraining validates on it) and ``test``, drawn from the labeled
utterances (or from all, without transcripts): whole speakers (``split="speaker"``), random
utterances (``"random"``), or the folder's own ``dev/`` and ``test/`` subdirs (``"none"``: nothing
is drawn). Written: ``train`` (everything else: pretraining), ``train_labeled`` (its labeled
part: fine-tuning, listed in ``labeled_subsets`` as ``all``), ``dev``, ``test``, ``units.txt``
and ``custom.yaml`` (what was found and done).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import soundfile as sf
import yaml

from sslseq.audio import audio_info, read_audio
from sslseq.data.kaldi import c_sorted, write_data_dir
from sslseq.data.text import BLANK, WORD_SEP, CharTokenizer, normalize_letters
from sslseq.utils import SslseqError, atomic_path, atomic_write_text, get_logger

log = get_logger(__name__)

SAMPLE_RATE = 16000
SPK_FROM = ("dir", "none")
SPLITS = ("auto", "speaker", "random", "none")
# soundfile's formats by their usual file extensions (libsndfile's names, lower-cased, plus aliases).
AUDIO_EXTENSIONS = frozenset(
    {f.lower() for f in sf.available_formats()} | {"aif", "aiff", "oga", "opus", "wave", "snd"}
)
_UNSAFE = re.compile(r"[^\w.\-]")
_SHOWN = 10
_WARNED_FILES = 20  # downmix warnings shown one by one; the rest are counted (all are in custom.yaml)


def _raise(problems: list[str], hint: str) -> None:
    more = f"\n... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise SslseqError("\n".join(problems[:_SHOWN]) + more + f"\n{hint}")


def safe_id(s: str) -> str:
    """``s`` with every character other than a letter, digit, '.', '_' or '-' replaced by '_'."""
    return _UNSAFE.sub("_", s)


@dataclass
class AudioFile:
    path: Path  # absolute
    rel: PurePosixPath  # under the audio dir
    utt: str
    spk: str
    sample_rate: int = 0
    channels: int = 0
    frames: int = 0

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def needs_copy(self) -> bool:
        return self.sample_rate != SAMPLE_RATE or self.channels != 1


def find_audio(audio_dir: Path) -> list[Path]:
    """Every file under ``audio_dir`` whose extension is an audio format soundfile reads, sorted;
    an error saying what was found when there is none."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise SslseqError(f"--audio-dir {audio_dir}: not a directory")
    found, other = [], Counter()
    for root, dirs, files in os.walk(audio_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            ext = name.rsplit(".", 1)[1].lower() if "." in name else ""
            if ext in AUDIO_EXTENSIONS:
                found.append(Path(root) / name)
            else:
                other[f".{ext}" if ext else "(no extension)"] += 1
    if not found:
        seen = ", ".join(f"{n} {e}" for e, n in other.most_common()) or "nothing"
        raise SslseqError(
            f"--audio-dir {audio_dir}: no audio files found (found: {seen}); audio is recognised by its extension, "
            f"one of: {', '.join(sorted(AUDIO_EXTENSIONS))}")
    if other:
        log.info("%s: %d file(s) that are not audio by their extension left aside (%s)", audio_dir,
                 sum(other.values()), ", ".join(f"{n} {e}" for e, n in other.most_common(5)))
    return sorted(found, key=lambda p: str(p))


def assign_ids(audio_dir: Path, paths: list[Path], spk_from: str = "dir") -> list[AudioFile]:
    """An utterance id and speaker per file (see the module doc); ids that two files would share
    are one error naming both."""
    if spk_from not in SPK_FROM:
        raise SslseqError(f"--spk-from {spk_from}: use one of {', '.join(SPK_FROM)}")
    audio_dir = Path(audio_dir).resolve()
    items: dict[str, AudioFile] = {}
    problems = []
    for p in paths:
        p = Path(p).resolve()
        rel = PurePosixPath(p.relative_to(audio_dir).as_posix())
        base = safe_id("-".join(rel.with_suffix("").parts))
        spk = safe_id(rel.parent.name) if spk_from == "dir" and len(rel.parts) > 1 else ""
        # Kaldi needs utterance ids to start with their speaker's (sorting by either then agrees).
        utt = base if not spk or base.startswith(f"{spk}-") else f"{spk}-{base}"
        if utt in items:
            problems.append(f"{p}: utterance id '{utt}' is also that of {items[utt].path}; rename one of them "
                            "(ids come from the relative path without extension, unsafe characters as '_')")
            continue
        items[utt] = AudioFile(p, rel, utt, spk or utt)
    if problems:
        _raise(problems, "every file needs an id of its own")
    return [items[u] for u in c_sorted(items)]


def read_headers(items: list[AudioFile]) -> None:
    """Sample rate, channels and length of every file from its header (all unreadable files named at once)."""
    problems = []
    for it in items:
        try:
            it.sample_rate, it.channels, it.frames = audio_info(str(it.path), where=it.utt)
        except SslseqError as e:
            problems.append(str(e))
    if problems:
        _raise(problems, "fix, re-create or remove these files")


# ---------------------------------------------------------------- transcripts


def _keys(it: AudioFile) -> list[tuple[int, str]]:
    """(priority, key) a transcript line may name ``it`` by: utt id, relative path (with or without
    extension), file name, stem."""
    return [(0, it.utt), (1, str(it.rel)), (1, str(it.rel.with_suffix(""))), (2, it.rel.name), (2, it.rel.stem)]


def read_transcripts(text_file: Path, items: list[AudioFile], audio_dir: Path) -> dict[str, tuple[str, str]]:
    """utt -> (raw transcript, 'file:line') of every line of ``text_file``. Lines that match no file,
    name several (a stem two files share), have no transcript, or name a file another line named
    too are errors, all at once."""
    text_file = Path(text_file)
    if not text_file.is_file():
        raise SslseqError(f"--text {text_file}: no such file (lines '<file or utt id> <transcript>')")
    by_key: dict[str, dict[int, set[str]]] = {}
    for it in items:
        for prio, key in _keys(it):
            by_key.setdefault(key, {}).setdefault(prio, set()).add(it.utt)
    audio_dir = Path(audio_dir).resolve()
    out: dict[str, tuple[str, str]] = {}
    problems = []
    try:
        lines = text_file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise SslseqError(f"--text {text_file}: not UTF-8 ({e}); convert it (e.g. 'iconv -f latin1 -t utf-8')") from None
    for no, line in enumerate(lines, 1):
        where = f"{text_file}:{no}"
        if not line.strip():
            continue
        key, _, words = line.strip().partition(" ")
        if "\t" in key:
            key, _, rest = key.partition("\t")
            words = f"{rest} {words}"
        key = key.replace("\\", "/").removeprefix("./")
        if key.startswith("/"):
            try:
                key = Path(key).resolve().relative_to(audio_dir).as_posix()
            except ValueError:
                pass
        if not words.strip():
            problems.append(f"{where}: '{key}': no transcript after the file name")
            continue
        hits = by_key.get(key)
        if not hits:
            problems.append(f"{where}: '{key}' matches no audio file under {audio_dir} (by utt id, relative path, "
                            "file name or stem)")
            continue
        utts = hits[min(hits)]
        if len(utts) > 1:
            problems.append(f"{where}: '{key}' names {len(utts)} files ({', '.join(c_sorted(utts)[:3])}); use the "
                            "relative path instead")
            continue
        (utt,) = utts
        if utt in out:
            problems.append(f"{where}: '{key}' is the file {utt} again (first on {out[utt][1]}); keep one line per file")
            continue
        out[utt] = (" ".join(words.split()), where)
    if problems:
        _raise(problems, f"fix {text_file}")
    if not out:
        raise SslseqError(f"--text {text_file}: no transcript lines")
    return out


def normalize_transcripts(raw: dict[str, tuple[str, str]]) -> dict[str, str]:
    """utt -> transcript normalised with ``normalize_letters``; a line left empty is an error, and
    characters dropped (digits, punctuation, symbols) are reported once."""
    out, empty, dropped = {}, [], Counter()
    example = ""
    for utt, (t, where) in raw.items():
        n = normalize_letters(t)
        if not n:
            empty.append(f"{where}: {utt}: no letters left after normalization ({t!r})")
            continue
        gone = Counter(c for c in t if not c.isspace() and c not in n and c.upper() not in n)
        if gone and not example:
            example = f"{where}: {t!r} -> {n!r}"
        dropped.update(gone)
        out[utt] = n
    if empty:
        _raise(empty, "give these files a transcript of words, or remove their lines")
    digits = sorted(c for c in dropped if c.isdigit())
    if dropped:
        log.warning("transcripts: characters that are not letters were removed (%s), e.g. %s%s",
                    " ".join(f"{c!r}×{n}" for c, n in dropped.most_common(15)), example,
                    "; digits are dropped, spell spoken numbers out in the transcripts" if digits else "")
    return out


def derive_units(texts: dict[str, str], min_count: int = 10) -> tuple[list[str], Counter]:
    """The CTC units of the transcripts: blank, ``|``, then every character they use (C order), and
    each character's count; characters seen fewer than ``min_count`` times are named in a warning
    (CTC learns little of them)."""
    counts = Counter(c for t in texts.values() for c in t if c != " ")
    rare = [(c, n) for c, n in sorted(counts.items(), key=lambda x: (x[1], x[0])) if n < min_count]
    if rare:
        log.warning("transcripts: %d of the %d characters are rare (seen fewer than %d times): %s; CTC learns "
                    "little of them (check them for typos or characters of another script)", len(rare), len(counts),
                    min_count, " ".join(f"{c!r}×{n}" for c, n in rare))
    return [BLANK, WORD_SEP, *sorted(counts)], counts


def check_units(texts: dict[str, str], raw: dict[str, tuple[str, str]], tok: CharTokenizer, units_file: Path) -> None:
    """Every transcript must be spelled in ``tok``'s units (a given units file); each that is not is named."""
    problems = []
    for utt in c_sorted(texts):
        bad = tok.check_text(texts[utt])
        if bad:
            problems.append(f"{raw[utt][1]}: {utt}: characters not in {units_file}: "
                            f"{', '.join(f'{c!r} (U+{ord(c):04X})' for c in bad)}")
    if problems:
        _raise(problems, f"add the characters to {units_file} (one unit a line), fix the transcripts, "
                         "or leave --units out to take the units from the transcripts")


# ---------------------------------------------------------------- held-out sets


def _count(size: float, n: int, what: str, opt: str) -> int:
    """A size as a count: a fraction (< 1) of ``n``, at least 1 unless 0; or a whole number."""
    if size < 0 or (size >= 1 and size != int(size)):
        raise SslseqError(f"{opt} {size:g}: a fraction below 1 (of the {what}) or a whole number of {what} is needed")
    return int(size) if size >= 1 or size == 0 else max(1, round(size * n))


def resolve_split(split: str, items: list[AudioFile], spk_from: str) -> str:
    """``auto``: whole speakers when there are at least 3 (so dev and test have their own), else random."""
    if split not in SPLITS:
        raise SslseqError(f"--split {split}: use one of {', '.join(SPLITS)}")
    if split != "auto":
        return split
    n_spk = len({it.spk for it in items})
    chosen = "speaker" if spk_from == "dir" and n_spk >= 3 else "random"
    log.info("--split auto: %s (%d speakers)", chosen, n_spk)
    return chosen


def hold_out(pool: list[AudioFile], split: str, dev_size: float, test_size: float, seed: int
             ) -> tuple[list[str], list[str]]:
    """(dev utts, test utts) drawn from ``pool`` with ``seed``: whole speakers (sizes count
    speakers) or random utterances (sizes count utterances); something is always left to train on."""
    rng = random.Random(seed)
    if split == "speaker":
        by_spk: dict[str, list[str]] = {}
        for it in pool:
            by_spk.setdefault(it.spk, []).append(it.utt)
        spks = c_sorted(by_spk)
        n_dev = _count(dev_size, len(spks), "speakers", "--dev-size")
        n_test = _count(test_size, len(spks), "speakers", "--test-size")
        if n_dev < 1 or n_dev + n_test >= len(spks):
            raise SslseqError(
                f"--split speaker: {len(spks)} speaker(s), but {n_dev} for dev and {n_test} for test leave none to train "
                "on (dev needs at least one); use smaller --dev-size/--test-size, or --split random")
        rng.shuffle(spks)
        return ([u for s in spks[:n_dev] for u in by_spk[s]], [u for s in spks[n_dev:n_dev + n_test] for u in by_spk[s]])
    utts = [it.utt for it in pool]
    n_dev = _count(dev_size, len(utts), "utterances", "--dev-size")
    n_test = _count(test_size, len(utts), "utterances", "--test-size")
    if n_dev < 1 or n_dev + n_test >= len(utts):
        raise SslseqError(f"--split random: {len(utts)} utterance(s), but {n_dev} for dev and {n_test} for test leave "
                          "none to train on (dev needs at least one); use smaller --dev-size/--test-size")
    rng.shuffle(utts)
    return utts[:n_dev], utts[n_dev:n_dev + n_test]


def own_split(items: list[AudioFile]) -> tuple[list[str], list[str]]:
    """``split="none"``: the folder's own ``dev/`` and ``test/`` top-level subdirs are the held-out sets."""
    dev = [it.utt for it in items if it.rel.parts[0] == "dev" and len(it.rel.parts) > 1]
    test = [it.utt for it in items if it.rel.parts[0] == "test" and len(it.rel.parts) > 1]
    if not dev:
        raise SslseqError("--split none: the audio dir has no dev/ subdir with audio (the held-out sets are its dev/ and "
                          "test/ subdirs); add one, or draw them: --split speaker|random")
    return dev, test


# ---------------------------------------------------------------- 16 kHz mono copies


def _convert(it: AudioFile, out: Path) -> int:
    """Write ``it`` as 16 kHz mono 16-bit WAV to ``out`` (atomically); its length in samples. An
    existing copy newer than its source is kept (a killed preparation resumes)."""
    if out.is_file() and out.stat().st_mtime >= it.path.stat().st_mtime:
        try:
            info = sf.info(str(out))
            if info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0:
                return int(info.frames)
        except (sf.LibsndfileError, RuntimeError):
            pass
    x = read_audio(str(it.path), sample_rate=SAMPLE_RATE, where=it.utt, downmix=True, warn_resample=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        sf.write(str(tmp), x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return len(x)


def make_copies(items: list[AudioFile], copy_dir: Path, nj: int = 1) -> dict[str, str]:
    """utt -> the 16 kHz mono copy of each file that is not 16 kHz mono (every failure named at once);
    each downmix is a warning naming the file."""
    todo = [it for it in items if it.needs_copy]
    stereo = [it for it in todo if it.channels != 1]
    for i, it in enumerate(stereo):
        if i < _WARNED_FILES:
            log.warning("%s: %d channels, downmixed to mono (their mean) into %s", it.path, it.channels,
                        copy_dir / f"{it.utt}.wav")
    if len(stereo) > _WARNED_FILES:
        log.warning("... and %d more files downmixed (all listed in custom.yaml)", len(stereo) - _WARNED_FILES)
    rates = Counter(it.sample_rate for it in todo if it.sample_rate != SAMPLE_RATE)
    if rates:
        log.info("resampling to 16 kHz once, into %s: %s", copy_dir,
                 ", ".join(f"{n} file(s) at {sr} Hz" for sr, n in sorted(rates.items())))

    def one(it: AudioFile) -> tuple[AudioFile, str | None]:
        try:
            it.frames = _convert(it, copy_dir / f"{it.utt}.wav")
            it.sample_rate, it.channels = SAMPLE_RATE, 1
        except SslseqError as e:
            return it, f"{it.path}: {e}"
        return it, None

    problems = []
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:  # soundfile and soxr release the GIL
        for it, err in pool.map(one, todo):
            if err:
                problems.append(err)
    if problems:
        _raise(problems, "fix, re-create or remove these files")
    return {it.utt: str(copy_dir / f"{it.utt}.wav") for it in todo}


# ---------------------------------------------------------------- the data dirs


def prepare_custom(
    audio_dir: str | os.PathLike, data_dir: str | os.PathLike, corpus_dir: str | os.PathLike, *,
    text: str | os.PathLike | None = None, spk_from: str = "dir", split: str = "auto", dev_size: float = 0.1,
    test_size: float = 0.1, seed: int = 0, min_char_count: int = 10, units: str | os.PathLike | None = None,
    nj: int = 1,
) -> dict:
    """The data dirs of the module doc from ``audio_dir`` into ``data_dir``, copies into
    ``corpus_dir/audio``; returns what ``custom.yaml`` records."""
    audio_dir, data_dir = Path(audio_dir), Path(data_dir)
    corpus_dir = Path(corpus_dir).resolve()  # wav.scp holds absolute paths, as the other corpora's
    items = assign_ids(audio_dir, find_audio(audio_dir), spk_from)
    read_headers(items)
    by_utt = {it.utt: it for it in items}
    texts: dict[str, str] = {}
    unit_list: list[str] | None = None
    if text is not None:
        raw = read_transcripts(Path(text), items, audio_dir)
        texts = normalize_transcripts(raw)
        if units is not None:
            tok = CharTokenizer.from_file(units)
            check_units(texts, raw, tok, Path(units))
            unit_list = tok.units
        else:
            unit_list, _ = derive_units(texts, min_char_count)
    split = resolve_split(split, [by_utt[u] for u in texts] if texts else items, spk_from)
    if split == "none":
        dev, test = own_split(items)
        unlabeled = [u for u in dev + test if u not in texts] if texts else []
        if unlabeled:
            _raise([f"{by_utt[u].path}: in the held-out {by_utt[u].rel.parts[0]}/ but has no transcript" for u in unlabeled],
                   f"dev/ and test/ are scored: give every file there a line in {text}")
    else:
        pool = [by_utt[u] for u in c_sorted(texts)] if texts else items
        dev, test = hold_out(pool, split, dev_size, 0 if not texts else test_size, seed)
        if not texts:
            test = []  # nothing to score without transcripts: dev only, for pretraining's validation
    held = set(dev) | set(test)
    train = [it.utt for it in items if it.utt not in held]
    if not train:
        raise SslseqError(f"{audio_dir}: every file is held out for dev/test; nothing left to pretrain on")
    orig = {it.utt: (it.sample_rate, it.channels) for it in items}  # before the copies are 16 kHz mono
    copies = make_copies(items, corpus_dir / "audio", nj)
    wav = {it.utt: copies.get(it.utt, str(it.path)) for it in items}

    def write(name: str, utts: list[str], with_text: bool) -> None:
        write_data_dir(data_dir / name, wav={u: wav[u] for u in utts},
                       text={u: texts[u] for u in utts} if with_text else None,
                       utt2spk={u: by_utt[u].spk for u in utts}, utt2dur={u: by_utt[u].seconds for u in utts})
        secs = sum(by_utt[u].seconds for u in utts)
        log.info("%s: %d utterances, %d speakers, %.1f s%s", data_dir / name, len(utts),
                 len({by_utt[u].spk for u in utts}), secs, " (transcribed)" if with_text else "")

    labeled_train = [u for u in train if u in texts]
    if texts and not labeled_train:
        raise SslseqError(f"--text {text}: every transcribed file is held out (dev/test); none is left to fine-tune on")
    write("train", train, bool(texts) and len(labeled_train) == len(train))
    write("dev", dev, bool(texts))
    if test:
        write("test", test, bool(texts))
    elif (data_dir / "test").exists():
        shutil.rmtree(data_dir / "test")  # a test set of an earlier preparation would be scored
    if texts:
        write("train_labeled", labeled_train, True)
        CharTokenizer(unit_list).save(data_dir / "units.txt")
        atomic_write_text(data_dir / "labeled_subsets", "all train_labeled\n")
    else:
        for stale in ("units.txt", "labeled_subsets"):
            (data_dir / stale).unlink(missing_ok=True)
    info = {
        "audio_dir": str(audio_dir.resolve()),
        "files": len(items),
        "hours": round(sum(it.seconds for it in items) / 3600, 4),
        "speakers": len({it.spk for it in items}),
        "spk_from": spk_from,
        "split": split,
        "seed": seed,
        "sets": {"train": len(train), "dev": len(dev), "test": len(test),
                 **({"train_labeled": len(labeled_train)} if texts else {})},
        "transcripts": str(Path(text).resolve()) if text is not None else None,
        "units": None if unit_list is None else "".join(u for u in unit_list[2:]),
        "sample_rates": {sr: n for sr, n in sorted(Counter(sr for sr, _ in orig.values()).items())},
        "resampled": sorted(str(by_utt[u].rel) for u, (sr, _) in orig.items() if sr != SAMPLE_RATE),
        "downmixed": sorted(str(by_utt[u].rel) for u, (_, ch) in orig.items() if ch != 1),
        "copies": str((corpus_dir / "audio").resolve()) if copies else None,
    }
    atomic_write_text(data_dir / "custom.yaml", yaml.safe_dump(info, sort_keys=False, allow_unicode=True))
    return info
