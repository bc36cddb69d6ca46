"""A small fake LibriSpeech + Libri-light tree built from the tiny synthesized corpus: the real
layout (<set>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac, <spk>-<chapter>.trans.txt, Libri-light's
librispeech_finetuning/1h/{0..5}/{clean,other} and 9h/{clean,other}), real speech written as flac."""

from __future__ import annotations

import csv
from pathlib import Path

import soundfile as sf

FT_PARTS = [f"1h/{i}/{k}" for i in range(6) for k in ("clean", "other")] + ["9h/clean", "9h/other"]


def make_fake_librispeech(synth_corpus: Path, out: Path, *, mini: bool = False) -> Path:
    """Write the tree under ``out`` (LibriSpeech/ and librispeech_finetuning/); returns ``out``.

    train -> train-clean-100, dev -> dev-clean/dev-other, test -> test-clean/test-other (speakers
    alternate); the train utterances are also Libri-light's folds: half of them in 1h/0 (so the
    10min set has enough to fine-tune on), the rest round-robin over the other parts. ``mini``:
    Mini LibriSpeech's layout instead (train -> train-clean-5, dev -> dev-clean-2, test ->
    test-clean; no Libri-light folds)."""
    with open(synth_corpus / "corpus.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    spk_ids = {s: str(100 + i) for i, s in enumerate(sorted({r["spk"] for r in rows}))}
    chapters: dict[tuple[Path, str], list[tuple[str, str, str]]] = {}  # (set dir, spk) -> (wav, text, utt)
    train_seen = 0
    per_spk: dict[str, int] = {}
    for r in rows:
        spk = spk_ids[r["spk"]]
        n = per_spk[spk] = per_spk.get(spk, -1) + 1
        utt = f"{spk}-{1000 + int(spk)}-{n:04d}"  # one id per utterance, in every set that holds it
        sets = []
        if mini:
            sets.append(out / "LibriSpeech" / {"train": "train-clean-5", "dev": "dev-clean-2", "test": "test-clean"}[r["split"]])
        elif r["split"] == "train":
            sets.append(out / "LibriSpeech" / "train-clean-100")
            n_train = sum(1 for x in rows if x["split"] == "train")
            part = FT_PARTS[train_seen % 2] if train_seen < n_train // 2 else FT_PARTS[2 + train_seen % (len(FT_PARTS) - 2)]
            sets.append(out / "librispeech_finetuning" / part)
            train_seen += 1
        else:
            kind = "clean" if int(spk) % 2 == 0 else "other"
            sets.append(out / "LibriSpeech" / f"{r['split']}-{kind}")
        for s in sets:
            chapters.setdefault((s, spk), []).append((r["wav"], r["text"], utt))
    for (set_dir, spk), utts in chapters.items():
        ch = str(1000 + int(spk))
        d = set_dir / spk / ch
        d.mkdir(parents=True, exist_ok=True)
        lines = []
        for wav, text, utt in utts:
            audio, sr = sf.read(synth_corpus / wav)
            sf.write(d / f"{utt}.flac", audio, sr, format="FLAC")
            lines.append(f"{utt} {text.upper()}\n")
        (d / f"{spk}-{ch}.trans.txt").write_text("".join(lines))
    return out
