"""A user's own folder of audio (sslseq/data/custom.py, egs/custom/run.sh): mixed wav/flac/ogg at
8/16/22.05/44.1 kHz, mono and stereo, espeak-ng speech (English from the tiny corpus, one Spanish
speaker), with and without transcripts."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import yaml

from custom_fake import SPANISH, add_espeak_speaker, make_audio_folder, write_transcripts
from sslseq.data.custom import assign_ids, find_audio, prepare_custom
from sslseq.data.kaldi import check_data_dir, load_data_dir
from sslseq.data.text import DEFAULT_UNITS, normalize_for, normalize_letters, normalize_text
from sslseq.utils import SslseqError

RUN = Path(__file__).resolve().parents[1] / "egs" / "custom" / "run.sh"


@pytest.fixture(scope="module")
def folder(tiny_corpus: Path, tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, tuple[int, int]]]:
    """The audio folder (read-only), relative path -> transcript, relative path -> (rate, channels)."""
    out, texts, kinds = make_audio_folder(tiny_corpus, tmp_path_factory.mktemp("my_audio"))
    spanish = add_espeak_speaker(out, "hablante", "es", SPANISH)
    texts.update(spanish)
    kinds.update({rel: (22050, 1) for rel in spanish})
    return out, texts, kinds


@pytest.fixture(scope="module")
def transcripts(folder, tmp_path_factory) -> Path:
    return write_transcripts(tmp_path_factory.mktemp("text") / "text.txt", folder[1])


@pytest.fixture
def logs(caplog):
    """caplog hooked into the sslseq logger (it does not propagate to the root logger)."""
    logger = logging.getLogger("sslseq")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "audio"))


# ---------------------------------------------------------------- sslseq/data/custom.py


def test_prepare_mixed_folder(folder, transcripts: Path, tmp_path: Path, logs):
    audio, texts, kinds = folder
    info = prepare_custom(audio, tmp_path / "data", tmp_path / "corpus", text=transcripts, seed=0)
    caplog = logs
    data = tmp_path / "data"
    assert info["split"] == "speaker" and info["files"] == len(texts)
    assert info["sample_rates"] == {8000: 14, 16000: 27, 22050: 6, 44100: 26}
    units = (data / "units.txt").read_text().split()
    assert units[:2] == ["<blank>", "|"] and {"Ñ", "Á", "É", "Ó"} <= set(units) and "." not in units
    dirs = {n: load_data_dir(data / n) for n in ("train", "dev", "test", "train_labeled")}
    for name, d in dirs.items():
        assert not check_data_dir(d.path, units=data / "units.txt").problems, name
        for utt in d.utts:
            i = sf.info(d.wav[utt])
            assert (i.samplerate, i.channels) == (16000, 1), (name, utt)  # every entry is 16 kHz mono
            assert d.utt2dur[utt] == pytest.approx(i.frames / 16000, abs=2e-3)
    train, dev, test = dirs["train"], dirs["dev"], dirs["test"]
    # whole speakers held out, drawn from the transcribed files; the train text covers all of train
    assert not ({train.utt2spk[u] for u in train.utts} & {dev.utt2spk[u] for u in dev.utts})
    assert not ({train.utt2spk[u] for u in train.utts} & {test.utt2spk[u] for u in test.utts})
    assert len(train.utts) + len(dev.utts) + len(test.utts) == len(texts)
    assert dirs["train_labeled"].utts == train.utts
    assert (data / "labeled_subsets").read_text() == "all train_labeled\n"
    by_rel, named = {}, 0
    for d in dirs.values():
        for u in d.utts:
            by_rel[u] = d
    for rel, (sr, ch) in kinds.items():
        utt = rel.rsplit(".", 1)[0].replace("/", "-")
        d = by_rel[utt]
        assert d.utt2spk[utt] == rel.split("/")[0]  # speaker: the parent dir
        original = audio / rel
        if (sr, ch) == (16000, 1):
            assert d.wav[utt] == str(original)  # used where it is
        else:
            assert d.wav[utt] == str(tmp_path / "corpus" / "audio" / f"{utt}.wav")
            assert d.utt2dur[utt] == pytest.approx(sf.info(original).duration, abs=2e-3)
        if ch == 2:
            named += f"{original}: 2 channels, downmixed to mono" in caplog.text
            if rel.endswith(".wav"):  # lossless: the copy is the channels' mean, resampled
                x, _ = sf.read(original, dtype="float32")
                ref = soxr.resample(x.mean(axis=1), sr, 16000, quality="HQ")
                got, _ = sf.read(d.wav[utt], dtype="float32")
                assert len(got) == len(ref) and np.abs(got - ref).max() < 2e-4
        if rel in texts and utt in d.text:
            assert d.text[utt] == normalize_letters(texts[rel])  # '.' gone, upper case, the letters kept
    assert any("NIÑO" in t for d in dirs.values() for t in d.text.values())
    assert "rare (seen fewer than 10 times)" in caplog.text and "'Ñ'" in caplog.text
    rec = yaml.safe_load((data / "custom.yaml").read_text())
    n_stereo = sum(ch == 2 for _, ch in kinds.values())
    assert len(rec["downmixed"]) == n_stereo > 20  # each named in a warning, up to 20, then counted
    assert named == 20 and f"... and {n_stereo - 20} more files downmixed (all listed in custom.yaml)" in caplog.text


def test_unlabeled_holds_out_dev_only(folder, tmp_path: Path):
    info = prepare_custom(folder[0], tmp_path / "data", tmp_path / "corpus", split="random", dev_size=5, seed=3)
    assert info["sets"] == {"train": len(folder[1]) - 5, "dev": 5, "test": 0}
    assert not (tmp_path / "data" / "test").exists() and not (tmp_path / "data" / "units.txt").exists()
    assert not (tmp_path / "data" / "train" / "text").exists()
    again = prepare_custom(folder[0], tmp_path / "data2", tmp_path / "corpus", split="random", dev_size=5, seed=3)
    assert (tmp_path / "data" / "dev" / "wav.scp").read_text() == (tmp_path / "data2" / "dev" / "wav.scp").read_text()
    assert again == info | {"copies": again["copies"]}  # same seed, same draw; the copies were kept


def test_partly_transcribed(folder, tmp_path: Path):
    """Transcripts of some files: dev/test come from them, the others are pretrained on only."""
    audio, texts, _ = folder
    some = dict(sorted(texts.items())[::3])
    text = write_transcripts(tmp_path / "t.txt", some)
    info = prepare_custom(audio, tmp_path / "data", tmp_path / "corpus", text=text, split="random", dev_size=3,
                          test_size=2)
    assert info["sets"]["dev"] == 3 and info["sets"]["test"] == 2
    assert info["sets"]["train_labeled"] == len(some) - 5 and info["sets"]["train"] == len(texts) - 5
    assert not (tmp_path / "data" / "train" / "text").exists()  # only part of train is transcribed
    assert len(load_data_dir(tmp_path / "data" / "dev").text) == 3


def test_ids_speakers_and_clashes(tmp_path: Path):
    x = np.zeros(1600, dtype=np.float32)
    for rel in ("alice/a b.wav", "alice/x.wav", "bob/deep/y.flac", "top.wav", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("not audio")
        else:
            sf.write(tmp_path / rel, x, 16000)
    items = {it.utt: it.spk for it in assign_ids(tmp_path, find_audio(tmp_path))}
    assert items == {"alice-a_b": "alice", "alice-x": "alice", "deep-bob-deep-y": "deep", "top": "top"}
    alone = {it.utt: it.spk for it in assign_ids(tmp_path, find_audio(tmp_path), "none")}  # each its own speaker
    assert alone == {u: u for u in ("alice-a_b", "alice-x", "bob-deep-y", "top")}
    sf.write(tmp_path / "alice" / "x.flac", x, 16000)  # the same id as alice/x.wav
    with pytest.raises(SslseqError, match=r"alice/x.wav: utterance id 'alice-x' is also that of .*alice/x.flac; rename one"):
        assign_ids(tmp_path, find_audio(tmp_path))


def test_empty_and_unreadable(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("hello")
    (tmp_path / "a" / "list.csv").write_text("x")
    with pytest.raises(SslseqError, match=r"no audio files found \(found: 1 .txt, 1 .csv|no audio files found \(found: 1 .csv, 1 .txt"):
        prepare_custom(tmp_path / "a", tmp_path / "data", tmp_path / "corpus")
    with pytest.raises(SslseqError, match="not a directory"):
        prepare_custom(tmp_path / "nowhere", tmp_path / "data", tmp_path / "corpus")
    sf.write(tmp_path / "a" / "good.wav", np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "a" / "bad.flac").write_bytes(b"fLaC but not really")
    (tmp_path / "a" / "empty.wav").write_bytes(b"")
    with pytest.raises(SslseqError) as e:
        prepare_custom(tmp_path / "a", tmp_path / "data", tmp_path / "corpus")
    assert str(tmp_path / "a" / "bad.flac") in str(e.value) and str(tmp_path / "a" / "empty.wav") in str(e.value)


def test_transcript_lines_named(folder, tmp_path: Path):
    audio = _copy(folder[0], tmp_path)
    shutil.copy(audio / "spk000" / "spk000-tr000000.wav", audio / "spk002" / "spk000-tr000000.wav")  # a shared stem
    text = tmp_path / "t.txt"
    text.write_text("spk001/spk001-te000000.flac hello there\n"
                    "spk001-spk001-te000000 hello again\n"           # the same file by utt id
                    "nobody/never.wav who is this\n"
                    "spk000-tr000000 which one\n"                   # two files have this stem
                    "spk003/spk003-tr000002\n")                      # no transcript
    with pytest.raises(SslseqError) as e:
        prepare_custom(audio, tmp_path / "data", tmp_path / "corpus", text=text)
    msg = str(e.value)
    assert f"{text}:2: 'spk001-spk001-te000000' is the file spk001-spk001-te000000 again (first on {text}:1)" in msg
    assert f"{text}:3: 'nobody/never.wav' matches no audio file" in msg
    assert f"{text}:4: 'spk000-tr000000' names 2 files" in msg
    assert f"{text}:5: 'spk003/spk003-tr000002': no transcript" in msg


def test_transcripts_outside_given_units(folder, tmp_path: Path):
    audio, texts, _ = folder
    text = write_transcripts(tmp_path / "t.txt", texts)
    units = tmp_path / "units.txt"
    units.write_text("\n".join(DEFAULT_UNITS) + "\n")  # A-Z only: the Spanish letters are not in it
    with pytest.raises(SslseqError) as e:
        prepare_custom(audio, tmp_path / "data", tmp_path / "corpus", text=text, units=units)
    assert f"hablante-hablante-00: characters not in {units}: 'Ñ' (U+00D1), 'Á' (U+00C1)" in str(e.value)
    assert f"{text}:" in str(e.value)


def test_split_options(folder, tmp_path: Path):
    audio = _copy(folder[0], tmp_path)
    with pytest.raises(SslseqError, match=r"--split speaker: 17 speaker\(s\), but 17 for dev .*leave none to train on"):
        prepare_custom(audio, tmp_path / "d", tmp_path / "c", split="speaker", dev_size=17)
    with pytest.raises(SslseqError, match="--dev-size 2.5: a fraction below 1"):
        prepare_custom(audio, tmp_path / "d", tmp_path / "c", split="random", dev_size=2.5)
    with pytest.raises(SslseqError, match="--split none: the audio dir has no dev/ subdir"):
        prepare_custom(audio, tmp_path / "d", tmp_path / "c", split="none")
    with pytest.raises(SslseqError, match="--split sideways: use one of"):
        prepare_custom(audio, tmp_path / "d", tmp_path / "c", split="sideways")
    (audio / "dev").mkdir()
    shutil.move(audio / "spk007", audio / "dev" / "spk007")
    info = prepare_custom(audio, tmp_path / "d", tmp_path / "c", split="none")
    dev = load_data_dir(tmp_path / "d" / "dev")
    assert info["sets"]["dev"] == len(dev.utts) > 0 and set(dev.utt2spk.values()) == {"spk007"}
    speakers = prepare_custom(audio, tmp_path / "d2", tmp_path / "c", split="speaker", dev_size=2, test_size=0)
    assert len(set(load_data_dir(tmp_path / "d2" / "dev").utt2spk.values())) == 2 and speakers["sets"]["test"] == 0


def test_normalize_letters_keeps_the_language():
    assert normalize_letters("¿Qué pasó, niño? ¡Mañana!") == "QUÉ PASÓ NIÑO MAÑANA"
    assert normalize_letters("Die Straße, 12 Äpfel.") == "DIE STRAßE ÄPFEL"  # ß has no one-letter capital
    assert normalize_letters("नमस्ते दुनिया") == "नमस्ते दुनिया"  # combining vowel signs stay
    assert normalize_letters("l'été 'quoted'") == "L'ÉTÉ QUOTED"
    assert normalize_for(DEFAULT_UNITS) is normalize_text and normalize_for(["<blank>", "|", "Ñ"]) is normalize_letters


def test_lm_text_and_overlap_keep_the_letters(tmp_path: Path):
    """With a corpus's units, the LM text and the dev/test overlap check normalise as its transcripts
    are: normalize_text would fold NIÑO to NINO and miss a dev sentence in the LM text."""
    from sslseq.lm.corpus import check_overlap, write_lm_text

    units = tmp_path / "units.txt"
    units.write_text("\n".join(["<blank>", "|", *sorted(set("ELNIÑOCMPAÁ'"))]) + "\n")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "text").write_text("u1 EL NIÑO COME PAN\n")
    info = write_lm_text(["el niño come pan", "el niño come", "mamá come pan"], tmp_path / "lm.txt", [dev], units=units)
    assert (tmp_path / "lm.txt").read_text() == "EL NIÑO COME\nMAMÁ COME PAN\n" and info["excluded_equal"] == 1
    (tmp_path / "leaky.txt").write_text("EL NIÑO COME PAN\n")
    with pytest.raises(SslseqError, match="hold an evaluation sentence"):
        check_overlap(tmp_path / "leaky.txt", [dev], units=units)


# ---------------------------------------------------------------- egs/custom/run.sh


def _run(*args: str, timeout: int = 1200):
    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SSLSEQ_NO_PROGRESS": "1"})


def test_recipe_with_transcripts(folder, transcripts: Path, tmp_path: Path):
    """Stages 0-7 at tiny size: fine-tuned on the transcribed train part (subset 'all'), decoded
    greedily and with an LM of the train transcripts, the WER table written."""
    work = tmp_path / "work"
    r = _run("--audio-dir", str(folder[0]), "--text", str(transcripts), "--tiny", "true", "--workdir", str(work))
    assert r.returncode == 0, r.stderr[-6000:]
    assert "2 channels, downmixed to mono" in r.stderr
    units = (work / "data" / "units.txt").read_text().split()
    lm_words = (work / "data" / "lm" / "lexicon.txt").read_text()
    assert "Ñ" in units and "Ñ" in (work / "data" / "lm" / "units.txt").read_text().split()
    assert any(c in lm_words for c in "ÑÁÉÓ") or "hablante" not in (work / "data" / "train" / "wav.scp").read_text()
    for exp in ("ctc_cpu_train_all_scratch", "ctc_cpu_train_all_from_pretrain_hubert_cpu_mfcc_k20"):
        cfg = yaml.safe_load((work / "exp" / exp / "config.yaml").read_text())
        assert cfg["data"]["train"] == "data/train_labeled" and cfg["data"]["units"] == "data/units.txt"
        assert (work / "exp" / exp / "units.txt").read_text().split() == units
        for s in ("dev", "test"):
            for sub in ("", "lm/"):
                wer = yaml.safe_load((work / "exp" / exp / f"decode_{s}" / sub / "wer.yaml").read_text())
                assert wer["n_utts"] == len(load_data_dir(work / "data" / s).utts) and 0 <= wer["wer"] <= 200
    results = (work / "exp" / "RESULTS.md").read_text()
    assert "ctc_cpu_train_all_scratch" in results and "| test |" in results and "| dev |" in results
    lm_text = (work / "data" / "lm" / "text").read_text().splitlines()
    for s in ("dev", "test"):  # the LM never saw a held-out sentence
        assert not set(load_data_dir(work / "data" / s).text.values()) & set(lm_text)


def test_recipe_unlabeled(folder, tmp_path: Path):
    """No --text: stages 0-5, then a message naming the encoder and exit 0; --lm false by itself."""
    work = tmp_path / "work"
    r = _run("--audio-dir", str(folder[0]), "--tiny", "true", "--workdir", str(work))
    assert r.returncode == 0, r.stderr[-6000:]
    assert "no --text: --lm false" in r.stderr
    enc = work / "exp" / "pretrain_hubert_cpu_mfcc_k20"
    assert f"no transcripts: stages 6-7 (CTC fine-tuning, decoding) are not run; the trained encoder is {enc}" in r.stderr
    assert (enc / "model.safetensors").is_file() and not list((work / "exp").glob("ctc_*"))
    assert sorted(p.name for p in (work / "data").iterdir() if p.is_dir()) == ["dev", "train"]
    r = _run("--audio-dir", str(folder[0]), "--tiny", "true", "--workdir", str(work), "--stage", "6")
    assert r.returncode == 1 and "stages 6-7 (CTC fine-tuning, decoding) need transcripts" in r.stderr
    r = _run("--audio-dir", str(folder[0]), "--tiny", "true", "--workdir", str(work), "--lm", "true")
    assert r.returncode == 1 and "--lm true needs transcripts" in r.stderr


def test_recipe_bad_input(folder, tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    r = _run("--audio-dir", str(empty), "--workdir", str(tmp_path / "w1"))
    assert r.returncode == 1 and "no audio files found (found: 1 .txt)" in r.stderr
    r = _run("--workdir", str(tmp_path / "w0"))
    assert r.returncode == 1 and "--audio-dir DIR is needed" in r.stderr
    r = _run("--audio-dir", str(folder[0]), "--text", str(tmp_path / "none.txt"), "--workdir", str(tmp_path / "w0"))
    assert r.returncode == 1 and "--text" in r.stderr and "no such file" in r.stderr
    assert not (tmp_path / "w0").exists()
    # a file whose header is fine but whose samples are not: stage 1 reads them and names the file
    audio = _copy(folder[0], tmp_path)
    nan = audio / "spk000" / "broken.wav"
    sf.write(nan, np.array([0.1, np.nan] * 8000, dtype=np.float32), 16000, subtype="FLOAT")
    (audio / "spk000" / "junk.ogg").write_bytes(b"OggS nothing")
    r = _run("--audio-dir", str(audio), "--workdir", str(tmp_path / "w2"), "--tiny", "true", "--stop-stage", "1")
    assert r.returncode == 1 and f"{audio / 'spk000' / 'junk.ogg'}" in r.stderr  # stage 0: the header
    (audio / "spk000" / "junk.ogg").unlink()
    r = _run("--audio-dir", str(audio), "--workdir", str(tmp_path / "w2"), "--tiny", "true", "--stop-stage", "1")
    assert r.returncode == 1 and f"audio contains NaN or infinite samples ({nan})" in r.stdout + r.stderr
