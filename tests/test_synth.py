"""The embedded espeak-ng / KJV corpus: speakers, splits, determinism, resume, data dirs."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sslseq.data.kaldi import load_data_dir, validate_data_dir
from synth_corpus import (
    NUM_SPEAKERS,
    SPLITS,
    _verse_sentences,
    load_sentences,
    spoken_form,
    synthesize_corpus,
)
from sslseq.data.text import DEFAULT_UNITS, CharTokenizer, normalize_text
from sslseq.utils import SslseqError

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("bible") is None,
    reason="espeak-ng and bible-kjv are needed (apt-get install espeak-ng bible-kjv)",
)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_verse_splitting():
    verse = "Lord, how are they increased that trouble me! many are they that rise up against me. Selah."
    assert _verse_sentences(verse) == [
        "Lord, how are they increased that trouble me",
        "many are they that rise up against me Selah",
    ]
    long = ", ".join(["and the word was with God"] * 5)  # 30 words, no sentence mark
    parts = _verse_sentences(long)
    assert len(parts) >= 2 and all(4 <= len(p.split()) <= 20 for p in parts)
    assert spoken_form("unto the LORD; O God, 'tis") == "unto the Lord O God, 'tis."


def test_sentences():
    sents = load_sentences()
    assert len(sents) > 10000
    norm = [normalize_text(s) for s in sents]
    assert len(set(norm)) == len(norm)
    assert all(4 <= len(n.split()) <= 20 for n in norm)
    assert not any(ch.isdigit() for s in sents for ch in s)
    tok = CharTokenizer(DEFAULT_UNITS)
    assert all(not tok.check_text(n) for n in norm)
    assert load_sentences() == sents


def test_tiny_corpus_speakers_and_splits(tiny_corpus: Path):
    speakers = read_tsv(tiny_corpus / "speakers.tsv")
    assert len(speakers) == NUM_SPEAKERS >= 40
    assert len({(s["voice"], s["variant"]) for s in speakers}) == len(speakers)
    assert len({s["spk"] for s in speakers}) == len(speakers)
    rows = read_tsv(tiny_corpus / "corpus.tsv")
    spk_split = {s["spk"]: s["split"] for s in speakers}
    by_split = {s: [r for r in rows if r["split"] == s] for s in SPLITS}
    for split, rs in by_split.items():
        assert all(spk_split[r["spk"]] == split for r in rs)
        assert len({r["spk"] for r in rs}) >= (2 if split != "train" else 10)
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not {r["spk"] for r in by_split[a]} & {r["spk"] for r in by_split[b]}
                assert not {r["text"] for r in by_split[a]} & {r["text"] for r in by_split[b]}
    total = sum(float(r["duration"]) for r in rows)
    assert 180 < total < 330, total  # --tiny is about 4 minutes
    assert all(r["utt"].startswith(r["spk"] + "-") for r in rows)


def test_tiny_corpus_audio(tiny_corpus: Path):
    rows = read_tsv(tiny_corpus / "corpus.tsv")
    for r in rows[:: max(1, len(rows) // 8)]:
        path = tiny_corpus / r["wav"]
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames / 16000 == pytest.approx(float(r["duration"]), abs=1e-3)
        x, _ = sf.read(str(path), dtype="float32")
        assert 0.4 < np.abs(x).max() <= 1.0
        frames = x[: len(x) // 400 * 400].reshape(-1, 400)
        energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
        # speech plus a noise floor 30-40 dB below it: loud and quiet frames both present
        assert energy_db.max() - np.percentile(energy_db, 5) > 20


def test_determinism_and_resume(tiny_corpus: Path, tmp_path: Path):
    again = tmp_path / "again"
    synthesize_corpus(again, hours=0.0, seed=0, tiny=True, nj=1)
    assert (again / "corpus.tsv").read_bytes() == (tiny_corpus / "corpus.tsv").read_bytes()
    rows = read_tsv(again / "corpus.tsv")
    probe, kept = again / rows[3]["wav"], again / rows[5]["wav"]
    assert probe.read_bytes() == (tiny_corpus / rows[3]["wav"]).read_bytes()

    # a killed run: one wav and corpus.tsv missing; the rerun redoes only those
    probe.unlink()
    (again / "corpus.tsv").unlink()
    os.utime(kept, (1_000_000, 1_000_000))
    synthesize_corpus(again, hours=0.0, seed=0, tiny=True, nj=2)
    assert probe.read_bytes() == (tiny_corpus / rows[3]["wav"]).read_bytes()
    assert kept.stat().st_mtime == 1_000_000
    assert (again / "corpus.tsv").read_bytes() == (tiny_corpus / "corpus.tsv").read_bytes()

    with pytest.raises(SslseqError, match="use a new output dir"):
        synthesize_corpus(again, hours=0.0, seed=1, tiny=True, nj=1)


def test_other_seed_differs(tiny_corpus: Path, tmp_path: Path):
    from synth_corpus import plan_corpus, speaker_table, split_seconds

    t0, t1 = speaker_table(0), speaker_table(1)
    assert t0 == speaker_table(0) and t0 != t1
    tiny = split_seconds(0.0, True)
    _, u0 = plan_corpus(tiny, 0, True, load_sentences())
    _, u1 = plan_corpus(tiny, 1, True, load_sentences())
    assert [u.text for u in u0] != [u.text for u in u1]
    # more hours only adds utterances: the tiny plan's splits are prefixes of a bigger one
    _, big = plan_corpus({s: 2.5 * v for s, v in tiny.items()}, 0, True, load_sentences())
    for split in SPLITS:
        small = [u for u in u0 if u.split == split]
        assert [u for u in big if u.split == split][: len(small)] == small


def test_split_seconds():
    from synth_corpus import EVAL_SECONDS, split_seconds

    # dev and test stay 0.3 h each whatever the train size, so results stay comparable
    assert split_seconds(10.0, False) == {"train": 36000.0, "dev": EVAL_SECONDS, "test": EVAL_SECONDS}
    assert split_seconds(2.0, False)["dev"] == split_seconds(10.0, False)["dev"] == 1080.0
    tiny = split_seconds(99.0, True)
    assert abs(sum(tiny.values()) - 240.0) < 1e-9 and tiny["train"] > tiny["dev"]


def test_prepare_data_dirs_validate(tiny_corpus: Path, tiny_data: Path):
    rows = read_tsv(tiny_corpus / "corpus.tsv")
    for split in SPLITS:
        d = tiny_data / split
        assert validate_data_dir(d) == []
        dd = load_data_dir(d)
        assert sorted(dd.utts) == sorted(r["utt"] for r in rows if r["split"] == split)
        assert all(Path(p).is_absolute() for p in dd.wav.values())
        assert (d / "spk2utt").is_file()


def test_prepare_without_corpus(tmp_path: Path):
    from synth_corpus import prepare_data_dirs

    with pytest.raises(SslseqError, match="run 'local/synth_corpus.py synth"):
        prepare_data_dirs(tmp_path, tmp_path / "data")


def test_missing_bible(monkeypatch, tmp_path: Path):
    import synth_corpus as synth

    real_which = shutil.which
    monkeypatch.setattr(synth.shutil, "which", lambda name: None if name == "bible" else real_which(name))
    with pytest.raises(SslseqError, match="apt-get install bible-kjv"):
        synth._bible_book("Ruth")
