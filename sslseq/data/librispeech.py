"""LibriSpeech, Mini LibriSpeech and Libri-light's fine-tuning sets as Kaldi data dirs.

Layout read (an existing copy, as the archives of openslr.org/12 and Libri-light extract):
  CORPUS/LibriSpeech/<set>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac
  CORPUS/LibriSpeech/<set>/<spk>/<chapter>/<spk>-<chapter>.trans.txt   ('<utt> <WORDS>' lines)
  CORPUS/librispeech_finetuning/1h/{0..5}/{clean,other}/<spk>/<chapter>/...   (same files)
  CORPUS/librispeech_finetuning/9h/{clean,other}/<spk>/<chapter>/...

Mini LibriSpeech (openslr.org/31: train-clean-5, dev-clean-2) extracts into the same LibriSpeech/
dir and is read the same way.

Data dir names are the set names with '_' for '-' (dev-clean -> data/dev_clean); the Libri-light
labeled sets are data/librilight_{10min,1h,10h} (10min: fold 0 of 1h; 1h: folds 0-5; 10h: 1h + 9h,
as fairseq's base_10m/base_1h/base_10h). utt2dur comes from the flac headers (soundfile.info),
so 960 h are not decoded just to know their durations.
"""

from __future__ import annotations

import os
from pathlib import Path

from sslseq.audio import audio_info
from sslseq.data.kaldi import c_sorted, write_data_dir
from sslseq.utils import SslseqError, atomic_write_text, get_logger

log = get_logger(__name__)

TRAIN_SETS = ("train-clean-100", "train-clean-360", "train-other-500")
EVAL_SETS = ("dev-clean", "dev-other", "test-clean", "test-other")
# Mini LibriSpeech (openslr.org/31): 5 h of train-clean-100's speakers and a 2-hour-ish dev-clean part.
MINI_SETS = ("train-clean-5", "dev-clean-2")
# Pretraining sets that are unions of LibriSpeech's training parts.
TRAIN_UNIONS = {
    "train-460": ("train-clean-100", "train-clean-360"),
    "train-960": TRAIN_SETS,
}
FT_DIR = "librispeech_finetuning"
# Libri-light's labeled sets: name -> parts under librispeech_finetuning/.
FT_SETS = {
    "10min": ("1h/0",),
    "1h": tuple(f"1h/{i}" for i in range(6)),
    "10h": tuple(f"1h/{i}" for i in range(6)) + ("9h",),
}
_MAX_SHOWN = 10


def set_parts(name: str) -> tuple[str, ...]:
    """The LibriSpeech sets a pretraining set name stands for."""
    if name in TRAIN_UNIONS:
        return TRAIN_UNIONS[name]
    if name in TRAIN_SETS or name in EVAL_SETS or name in MINI_SETS:
        return (name,)
    known = ", ".join(list(TRAIN_SETS) + list(TRAIN_UNIONS) + list(EVAL_SETS) + list(MINI_SETS))
    raise SslseqError(f"unknown LibriSpeech set '{name}'; use one of: {known}")


def data_name(name: str) -> str:
    return name.replace("-", "_")


def _raise(problems: list[str], hint: str) -> None:
    more = f"\n... and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
    raise SslseqError("\n".join(problems[:_MAX_SHOWN]) + more + f"\n{hint}")


def read_chapters(root: Path) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(utt -> flac path, utt -> transcript, problems) of every <spk>/<chapter> dir under root.

    Every flac needs a line in its chapter's trans.txt and every line a flac; each mismatch is
    named by file (and line)."""
    wav: dict[str, str] = {}
    text: dict[str, str] = {}
    problems: list[str] = []
    for spk_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for ch_dir in sorted(p for p in spk_dir.iterdir() if p.is_dir()):
            trans = ch_dir / f"{spk_dir.name}-{ch_dir.name}.trans.txt"
            flacs = {p.stem: p for p in ch_dir.glob("*.flac")}
            if not trans.is_file():
                if flacs:
                    problems.append(f"{trans}: missing ({len(flacs)} flac files in {ch_dir} have no transcript)")
                continue
            lines: dict[str, str] = {}
            for no, line in enumerate(trans.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                utt, _, words = line.strip().partition(" ")
                if not words.strip():
                    problems.append(f"{trans}:{no}: {utt}: no words after the utterance id")
                elif utt in lines:
                    problems.append(f"{trans}:{no}: {utt}: listed twice")
                lines[utt] = " ".join(words.split())
            for utt in c_sorted(flacs):
                if utt not in lines:
                    problems.append(f"{trans}: lacks utterance {utt} ({flacs[utt]} has no transcript line)")
                else:
                    wav[utt], text[utt] = str(flacs[utt].resolve()), lines[utt]
            for utt in lines:
                if utt not in flacs:
                    problems.append(f"{trans}: {utt}: transcript line without audio ({ch_dir / (utt + '.flac')} missing)")
    return wav, text, problems


def _durations(wav: dict[str, str], where: str) -> tuple[dict[str, float], list[str]]:
    """utt -> seconds from each flac's header; every unreadable file is named (all at once, in
    stage 0: a bad file does not stop a run hours later)."""
    durs: dict[str, float] = {}
    problems = []
    for utt in c_sorted(wav):
        try:
            sr, _, frames = audio_info(wav[utt], where=f"{where}: {utt}")
        except SslseqError as e:
            problems.append(str(e))
            continue
        durs[utt] = frames / sr
    return durs, problems


def _write(out: Path, parts: list[Path]) -> None:
    wav: dict[str, str] = {}
    text: dict[str, str] = {}
    problems: list[str] = []
    for part in parts:
        w, t, p = read_chapters(part)
        wav.update(w)
        text.update(t)
        problems += p
    if problems:
        _raise(problems, "fix the transcripts or re-extract the archive (the copy is incomplete)")
    if not wav:
        raise SslseqError(f"{', '.join(map(str, parts))}: no <spk>/<chapter>/*.flac files found")
    durs, problems = _durations(wav, str(parts[0]))
    if problems:
        _raise(problems, "re-extract or re-download these files (or delete them and their trans.txt lines)")
    utt2spk = {u: u.split("-")[0] for u in wav}
    write_data_dir(out, wav=wav, text=text, utt2spk=utt2spk, utt2dur=durs)
    log.info("%s: %d utterances, %d speakers, %.2f h", out, len(wav), len(set(utt2spk.values())),
             sum(durs.values()) / 3600)


def check_layout(corpus_dir: Path, sets: list[str], finetune: bool) -> None:
    """Fail before any work when a needed set is missing, saying which are missing and found."""
    ls = corpus_dir / "LibriSpeech"
    found = sorted(p.name for p in ls.iterdir() if p.is_dir()) if ls.is_dir() else []
    missing = [s for s in sets if s not in found]
    msgs = []
    if missing:
        msgs.append(f"{ls}: missing {', '.join(missing)} (found: {', '.join(found) or 'nothing'})")
    if finetune:
        ft = corpus_dir / FT_DIR
        need = sorted({f"{part}/{kind}" for parts in FT_SETS.values() for part in parts for kind in ("clean", "other")})
        lacking = [n for n in need if not (ft / n).is_dir()]
        if lacking:
            msgs.append(f"{ft}: missing {', '.join(lacking)} (Libri-light's librispeech_finetuning.tgz extracts them)")
    if msgs:
        raise SslseqError("\n".join(msgs) + "\nuse --corpus-dir DIR holding them, or --download true")


def prepare_librispeech(
    corpus_dir: str | os.PathLike, data_dir: str | os.PathLike, *, train_set: str = "train-clean-100",
    eval_sets: tuple[str, ...] = EVAL_SETS, finetune: bool = True,
) -> list[str]:
    """Data dirs for the pretraining set, the eval sets and (finetune) Libri-light's labeled sets;
    writes DATA_DIR/labeled_subsets ('<duration> <data dir name>' lines: the recipe fine-tunes on
    these instead of drawing subsets). Returns the data dir names written."""
    corpus_dir, data_dir = Path(corpus_dir), Path(data_dir)
    parts = set_parts(train_set)
    check_layout(corpus_dir, list(parts) + [s for s in eval_sets if s not in parts], finetune)
    ls = corpus_dir / "LibriSpeech"
    written = []
    for name, sets in [(train_set, parts)] + [(s, (s,)) for s in eval_sets if s != train_set]:
        _write(data_dir / data_name(name), [ls / s for s in sets])
        written.append(data_name(name))
    labeled = {}
    if finetune:
        ft = corpus_dir / FT_DIR
        for name, ft_parts in FT_SETS.items():
            dirs = [ft / p / kind for p in ft_parts for kind in ("clean", "other")]
            _write(data_dir / f"librilight_{name}", dirs)
            labeled[name] = f"librilight_{name}"
            written.append(labeled[name])
    if train_set == "train-clean-100":
        labeled["100h"] = data_name(train_set)  # fairseq's base_100h fine-tunes on train-clean-100
    atomic_write_text(data_dir / "labeled_subsets", "".join(f"{k} {v}\n" for k, v in labeled.items()))
    return written
