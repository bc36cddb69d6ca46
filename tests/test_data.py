"""Audio reading, Kaldi data dirs (read/write/validate/subset) and character units."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sslseq.audio import audio_info, read_audio
from sslseq.data.kaldi import load_data_dir, read_kaldi_map, subset_by_duration, validate_data_dir, write_data_dir
from sslseq.data.text import DEFAULT_UNITS, CharTokenizer, normalize_text
from sslseq.utils import SslseqError

SR = 16000


def tone(seconds: float, sr: int = SR, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def make_dir(root: Path, n: int = 4) -> Path:
    """A valid data dir: 2 speakers, n utterances of 0.3-0.6 s tones."""
    d = root / "data"
    wav, text, utt2spk, utt2dur = {}, {}, {}, {}
    for i in range(n):
        spk = f"spk{i % 2}"
        utt = f"{spk}-utt{i:02d}"
        dur = 0.3 + 0.1 * i
        path = root / "wav" / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, tone(dur), SR, subtype="PCM_16")
        wav[utt], text[utt], utt2spk[utt], utt2dur[utt] = str(path), f"HELLO WORLD {chr(65 + i)}", spk, dur
    write_data_dir(d, wav=wav, text=text, utt2spk=utt2spk, utt2dur=utt2dur)
    return d


def line_of(path: Path, utt: str) -> int:
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if line.split()[0] == utt:
            return no
    raise AssertionError(f"{utt} not in {path}")


def wav_path(d: Path, utt: str) -> Path:
    return Path(read_kaldi_map(d / "wav.scp")[utt][0])


def only_problem(d: Path, **kw) -> str:
    problems = validate_data_dir(d, **kw)
    assert len(problems) == 1, problems
    return problems[0]


# ---------------------------------------------------------------- round trip


def test_write_load_validate_round_trip(tmp_path):
    d = make_dir(tmp_path)
    dd = load_data_dir(d)
    assert dd.utts == ["spk0-utt00", "spk0-utt02", "spk1-utt01", "spk1-utt03"]
    assert dd.text["spk1-utt03"] == "HELLO WORLD D"
    assert dd.utt2dur["spk0-utt02"] == pytest.approx(0.5)
    assert (d / "spk2utt").read_text() == "spk0 spk0-utt00 spk0-utt02\nspk1 spk1-utt01 spk1-utt03\n"
    assert validate_data_dir(d) == []
    x = read_audio(dd.wav["spk0-utt00"])
    assert x.dtype == np.float32 and x.ndim == 1 and len(x) == int(0.3 * SR)
    assert audio_info(dd.wav["spk0-utt00"]) == (SR, 1, int(0.3 * SR))


def test_c_sort_order(tmp_path):
    # LC_ALL=C puts upper case and '-' before lower case, unlike a locale-aware sort.
    write_data_dir(tmp_path, wav={"b": "x", "B": "x", "a-1": "x", "a_1": "x"}, text=None,
                   utt2spk={"b": "s", "B": "s", "a-1": "s", "a_1": "s"}, utt2dur={"b": 1, "B": 1, "a-1": 1, "a_1": 1})
    assert [ln.split()[0] for ln in (tmp_path / "wav.scp").read_text().splitlines()] == ["B", "a-1", "a_1", "b"]
    assert not (tmp_path / "text").exists()


# ---------------------------------------------------------------- validation: each bad input


def test_missing_audio_file(tmp_path):
    d = make_dir(tmp_path)
    wav_path(d, "spk0-utt02").unlink()
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:2: spk0-utt02: audio file not found"), p


def test_empty_audio_file(tmp_path):
    d = make_dir(tmp_path)
    wav_path(d, "spk1-utt01").write_bytes(b"")
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:3: spk1-utt01: audio file is empty"), p
    with pytest.raises(SslseqError, match=r"^here: audio file is empty"):
        read_audio(str(wav_path(d, "spk1-utt01")), where="here")


def test_truncated_wav(tmp_path):
    d = make_dir(tmp_path)
    path = wav_path(d, "spk1-utt03")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still claims the full length
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:4: spk1-utt03: truncated WAV"), p
    with pytest.raises(SslseqError, match="truncated"):
        read_audio(str(path))


def test_corrupt_file(tmp_path):
    d = make_dir(tmp_path)
    wav_path(d, "spk0-utt00").write_bytes(b"this is not audio at all" * 10)
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:1: spk0-utt00: unreadable or corrupt audio"), p


def test_stereo_refused(tmp_path):
    d = make_dir(tmp_path)
    path = wav_path(d, "spk0-utt02")
    sf.write(path, tone(0.5, channels=2), SR, subtype="PCM_16")
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:2: spk0-utt02: audio has 2 channels"), p
    with pytest.raises(SslseqError, match=r"^w: audio has 2 channels.*sox .* -c 1 out\.wav"):
        read_audio(str(path), where="w")


def test_wrong_sample_rate_warned_and_resampled(tmp_path, caplog):
    d = make_dir(tmp_path)
    path = wav_path(d, "spk0-utt00")
    sf.write(path, tone(0.3, sr=8000), 8000, subtype="PCM_16")
    logger = logging.getLogger("sslseq")  # does not propagate to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    try:
        assert validate_data_dir(d) == []  # a warning, not a problem
        assert "8000 Hz" in caplog.text and "spk0-utt00" in caplog.text
        x = read_audio(str(path), sample_rate=SR)
    finally:
        logger.removeHandler(caplog.handler)
    assert len(x) == pytest.approx(0.3 * SR, abs=2)
    # the 220 Hz tone survives resampling: its spectral peak is still at 220 Hz
    spec = np.abs(np.fft.rfft(x))
    assert np.fft.rfftfreq(len(x), 1 / SR)[spec.argmax()] == pytest.approx(220, abs=4)
    with pytest.raises(SslseqError, match=r"^wav\.scp:1: spk0-utt00: audio is 8000 Hz .*--no-resample"):
        read_audio(str(path), resample=False, where="wav.scp:1: spk0-utt00")


def test_duration_mismatch(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2dur").write_text((d / "utt2dur").read_text().replace("spk1-utt01 0.400", "spk1-utt01 0.600"))
    p = only_problem(d)
    assert p.startswith(f"{d}/utt2dur:3: spk1-utt01: utt2dur says 0.600 s but the audio is 0.400 s"), p


def test_text_outside_units(tmp_path):
    d = make_dir(tmp_path)
    (d / "text").write_text((d / "text").read_text().replace("HELLO WORLD C", "hello wörld 3"))
    p = only_problem(d)
    assert p.startswith(f"{d}/text:2: spk0-utt02: characters not in the unit set: 'h', 'e', 'l', 'o'"), p
    assert "'ö'" in p and "'3'" in p
    units = tmp_path / "units.txt"
    CharTokenizer(DEFAULT_UNITS + list("helowrdö3")).save(units)
    assert validate_data_dir(d, units=str(units)) == []


def test_invalid_utf8_named_with_its_byte_offset(tmp_path):
    d = make_dir(tmp_path)
    text = (d / "text").read_bytes()
    at = text.index(b"WORLD C") + 1
    (d / "text").write_bytes(text[:at] + b"\xd6" + text[at + 1:])  # latin-1 O-umlaut in WORLD
    col = at - text.rindex(b"\n", 0, at)
    p = only_problem(d)  # not "characters not in the unit set"
    assert p.startswith(f"{d}/text:2: invalid UTF-8: byte 0xD6 at byte offset {at} of the file (byte {col} of the "
                        "line); data files must be UTF-8"), p
    with pytest.raises(SslseqError, match=rf"text:2: invalid UTF-8: byte 0xD6 at byte offset {at}"):
        load_data_dir(d)
    units = tmp_path / "units.txt"
    units.write_bytes(b"<blank>\n|\nA\n\xe9\n")
    with pytest.raises(SslseqError, match=r"units.txt:4: invalid UTF-8: byte 0xE9 at byte offset 12"):
        CharTokenizer.from_file(units)


def test_a_byte_order_mark_is_ignored(tmp_path, caplog):
    d = make_dir(tmp_path)
    for name in ("wav.scp", "utt2spk", "text"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())
    logger = logging.getLogger("sslseq")  # does not propagate to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    try:
        assert validate_data_dir(d) == []  # no "not sorted", no key missing from the other files
    finally:
        logger.removeHandler(caplog.handler)
    assert f"{d / 'wav.scp'} starts with a UTF-8 byte order mark; it is ignored" in caplog.text
    assert load_data_dir(d).utts[0] == "spk0-utt00"


def test_an_utterance_id_with_a_space_is_one_problem(tmp_path):
    d = make_dir(tmp_path)
    for name in ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur"):
        (d / name).write_text((d / name).read_text().replace("spk1-utt01", "spk1 utt01"))
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:3: utterance id 'spk1 utt01' contains a space (after 'spk1') (also on "
                        "spk2utt:2, text:3, utt2dur:3, utt2spk:3); ids cannot hold whitespace"), p
    with pytest.raises(SslseqError, match=r"wav.scp:3: utterance id 'spk1 utt01' contains a space") as e:
        load_data_dir(d)
    assert "\n" not in str(e.value)
    with pytest.raises(SslseqError, match=r"utt2dur:3: utterance id 'spk1 utt01' contains a space"):
        read_kaldi_map(d / "utt2dur")


def test_a_wav_file_name_that_is_not_utf8(tmp_path):
    import os

    d = make_dir(tmp_path)
    old = wav_path(d, "spk0-utt02")
    new = os.fsencode(old.parent) + b"/caf\xe9.wav"  # a latin-1 file name
    os.rename(old, new)
    scp = (d / "wav.scp").read_bytes().replace(os.fsencode(old), new)
    (d / "wav.scp").write_bytes(scp)
    assert validate_data_dir(d) == []
    dd = load_data_dir(d)
    assert len(read_audio(dd.wav["spk0-utt02"])) == int(0.5 * SR)
    subset_by_duration(d, tmp_path / "sub", seconds=10.0 if dd.total_seconds >= 10 else dd.total_seconds)
    assert new in (tmp_path / "sub" / "wav.scp").read_bytes()  # written back as the same bytes


def test_utterance_in_text_not_in_wav_scp(tmp_path):
    d = make_dir(tmp_path)
    (d / "text").write_text((d / "text").read_text() + "spk1-utt09 EXTRA\n")
    p = only_problem(d)
    assert p == f"{d}/text:5: spk1-utt09: in text but not in {d}/wav.scp", p
    with pytest.raises(SslseqError, match=r"text:5: spk1-utt09: in text but not in"):
        load_data_dir(d)


def test_utterance_missing_from_utt2spk(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2spk").write_text("".join((d / "utt2spk").read_text().splitlines(True)[1:]))
    problems = validate_data_dir(d)
    assert f"{d}/wav.scp:1: spk0-utt00: missing from utt2spk" in problems
    assert any(p.startswith(f"{d}/spk2utt:1: spk0-utt00: in spk2utt but not in utt2spk") for p in problems), problems


def test_unsorted_and_duplicate_keys(tmp_path):
    d = make_dir(tmp_path)
    lines = (d / "utt2dur").read_text().splitlines(True)
    (d / "utt2dur").write_text(lines[1] + lines[0] + lines[2] + lines[3] + lines[3])
    problems = validate_data_dir(d)
    assert any(p.startswith(f"{d}/utt2dur:2: spk0-utt00: not sorted") for p in problems), problems
    assert any(p.startswith(f"{d}/utt2dur:5: spk1-utt03: duplicate key (first on line 4)") for p in problems), problems
    with pytest.raises(SslseqError, match=r"utt2dur:5: spk1-utt03: duplicate key"):
        read_kaldi_map(d / "utt2dur")


def test_spk2utt_inconsistent_and_missing_file(tmp_path):
    d = make_dir(tmp_path)
    (d / "spk2utt").write_text("spk0 spk0-utt00 spk0-utt02 spk1-utt01\nspk1 spk1-utt03\n")
    p = only_problem(d)
    assert p.startswith(f"{d}/spk2utt:1: spk1-utt01: under speaker 'spk0' but utt2spk says 'spk1'"), p
    (d / "spk2utt").unlink()
    assert validate_data_dir(d) == [f"{d}/spk2utt: required file missing"]


def test_pipe_refused_then_run(tmp_path):
    d = make_dir(tmp_path)
    path = wav_path(d, "spk0-utt02")
    (d / "wav.scp").write_text((d / "wav.scp").read_text().replace(f" {path}\n", f" cat {path} |\n"))
    p = only_problem(d)
    assert p.startswith(f"{d}/wav.scp:2: spk0-utt02: 'cat {path} |' is a pipe command; pass --allow-pipes"), p
    assert validate_data_dir(d, allow_pipes=True) == []
    x = read_audio(f"cat {path} |", allow_pipes=True)
    np.testing.assert_array_equal(x, read_audio(str(path)))
    with pytest.raises(SslseqError, match=r"^u1: pipe 'false' failed with exit status 1"):
        read_audio("false |", allow_pipes=True, where="u1")


def test_validate_reports_every_problem(tmp_path):
    d = make_dir(tmp_path)
    wav_path(d, "spk0-utt00").unlink()
    wav_path(d, "spk1-utt03").write_bytes(b"")
    (d / "text").write_text((d / "text").read_text().replace("WORLD B", "WORLD 7"))
    problems = validate_data_dir(d)
    assert [p.split(": ")[1] for p in problems] == ["spk1-utt01", "spk0-utt00", "spk1-utt03"], problems


def test_load_requires_utt2dur(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2dur").unlink()
    with pytest.raises(SslseqError, match=r"utt2dur: required file missing.*get_utt2dur"):
        load_data_dir(d)


def test_malformed_line(tmp_path):
    f = tmp_path / "utt2spk"
    f.write_text("a s1\nb\n")
    with pytest.raises(SslseqError, match=rf"^{f}:2: b: has no value"):
        read_kaldi_map(f)


# ---------------------------------------------------------------- subset


def make_big_dir(root: Path) -> Path:
    """6 speakers with 3-12 utterances of 1-5 s (audio files are not needed to subset)."""
    rng = np.random.default_rng(0)
    wav, utt2spk, utt2dur, text = {}, {}, {}, {}
    for s in range(6):
        for i in range(3 + 2 * s):
            utt = f"s{s}-{i:03d}"
            wav[utt], utt2spk[utt], utt2dur[utt], text[utt] = f"/nowhere/{utt}.wav", f"s{s}", float(rng.uniform(1, 5)), "A B"
    write_data_dir(root / "big", wav=wav, text=text, utt2spk=utt2spk, utt2dur=utt2dur)
    return root / "big"


def test_subset_by_duration(tmp_path):
    src = make_big_dir(tmp_path)
    full = load_data_dir(src)
    sub = subset_by_duration(src, tmp_path / "sub", seconds=60.0, seed=3)
    total = sub.total_seconds
    assert 60.0 <= total < 60.0 + max(full.utt2dur.values())
    counts = {}
    for u in sub.utts:
        counts[sub.utt2spk[u]] = counts.get(sub.utt2spk[u], 0) + 1
    assert len(counts) == 6 and max(counts.values()) - min(counts.values()) <= 1, counts
    assert validate_data_dir(sub.path) != []  # audio paths are fake, but the files themselves are consistent
    assert all("audio file not found" in p for p in validate_data_dir(sub.path))
    again = subset_by_duration(src, tmp_path / "sub2", seconds=60.0, seed=3)
    assert again.utts == sub.utts
    assert (tmp_path / "sub" / "text").read_text() == (tmp_path / "sub2" / "text").read_text()
    other = subset_by_duration(src, tmp_path / "sub3", seconds=60.0, seed=4)
    assert other.utts != sub.utts


def test_subset_stops_within_one_utterance(tmp_path):
    src = make_big_dir(tmp_path)
    full = load_data_dir(src)
    for seconds in (5.0, 33.3, full.total_seconds - 1.0):
        sub = subset_by_duration(src, tmp_path / "s", seconds=seconds, seed=0)
        assert sub.total_seconds >= seconds - 0.01
        assert sub.total_seconds - seconds < max(sub.utt2dur.values()) + 0.01
    everything = subset_by_duration(src, tmp_path / "all", seconds=full.total_seconds - 1e-3, seed=0)
    assert len(everything.utts) == len(full.utts)


def test_subset_too_little_audio(tmp_path):
    src = make_big_dir(tmp_path)
    with pytest.raises(SslseqError, match=r"holds only .* less than the 100000\.0 s asked"):
        subset_by_duration(src, tmp_path / "sub", seconds=100000.0)


# ---------------------------------------------------------------- text units


def test_normalize_text():
    assert normalize_text("  Hello, world!  It's  ‘quoted’ café 42nd. ") == "HELLO WORLD IT'S QUOTED CAFE ND"
    assert normalize_text("the saints' rest - 'tis so") == "THE SAINTS' REST TIS SO"


def test_char_tokenizer_round_trip(tmp_path):
    tok = CharTokenizer(DEFAULT_UNITS)
    assert len(tok) == 29 and tok.blank_id == 0 and tok.units[1] == "|"
    text = "IT'S THE LORD"
    ids = tok.encode(text)
    assert 0 not in ids and ids.count(1) == 2
    assert tok.decode(ids) == text
    assert tok.decode([0, *ids[:4], 0, 1, 1, 0, *ids[4:]]) == text
    tok.save(tmp_path / "units.txt")
    assert CharTokenizer.from_file(tmp_path / "units.txt").units == DEFAULT_UNITS
    assert tok.check_text("AB c1") == ["c", "1"]
    with pytest.raises(SslseqError, match=r"character 'é' \(U\+00E9\)"):
        tok.encode("CAFé")
    with pytest.raises(SslseqError, match="must start with '<blank>'"):
        CharTokenizer(["A", "<blank>", "|"])
