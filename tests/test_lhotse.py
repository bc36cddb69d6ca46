"""lhotse manifests <-> data dirs (``sslseq data from-lhotse`` / ``to-lhotse``) with the real lhotse, on
espeak-ng speech of the tiny synthesized corpus."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sslseq.audio import read_audio
from sslseq.cli import main
from sslseq.data.kaldi import load_data_dir, write_utterances
from sslseq.data.lhotse_manifests import AUDIO_SUBDIR, data_dir_to_lhotse, lhotse_to_data_dir
from sslseq.utils import SslseqError

lhotse = pytest.importorskip("lhotse", reason="lhotse is an optional extra (pip install lhotse)")
from lhotse import (  # noqa: E402
    CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet, load_manifest,
)
from lhotse.audio import AudioSource  # noqa: E402

FILES = ("wav.scp", "text", "utt2spk", "spk2utt", "utt2dur")


@pytest.fixture()
def small(tiny_data, tmp_path) -> Path:
    """Four dev utterances of two speakers (real espeak-ng speech, 16 kHz PCM WAVs)."""
    d = load_data_dir(tiny_data / "dev")
    spks = d.speakers()[:2]
    keep = [u for s in spks for u in [u for u in d.utts if d.utt2spk[u] == s][:2]]
    assert len(keep) == 4
    out = tmp_path / "small"
    write_utterances(out, d, keep)
    return out


def validate(data_dir: Path, *extra: str) -> int:
    return main(["data", "validate", *extra, str(data_dir)])


def test_to_lhotse_is_read_by_lhotse(small, tmp_path):
    d = load_data_dir(small)
    m = tmp_path / "m"
    assert main(["data", "to-lhotse", "--recordings", str(m / "r.jsonl.gz"), "--supervisions",
                 str(m / "s.jsonl.gz"), "--cuts", str(m / "c.jsonl.gz"), str(small)]) == 0
    recs, sups, cuts = (load_manifest(m / f) for f in ("r.jsonl.gz", "s.jsonl.gz", "c.jsonl.gz"))
    assert isinstance(recs, RecordingSet) and isinstance(sups, SupervisionSet) and isinstance(cuts, CutSet)
    assert sorted(recs.ids) == d.utts and sorted(s.id for s in sups) == d.utts
    for s in sups:
        assert s.text == d.text[s.id] and s.speaker == d.utt2spk[s.id] and s.recording_id == s.id
        assert s.duration == pytest.approx(d.utt2dur[s.id], abs=1e-3)
    for r in recs:
        assert r.duration == pytest.approx(d.utt2dur[r.id], abs=1e-3) and r.sampling_rate == 16000
        np.testing.assert_array_equal(r.load_audio()[0], read_audio(d.wav[r.id]))
    for c in cuts:
        (s,) = c.supervisions
        assert s.text == d.text[s.id] and c.duration == pytest.approx(d.utt2dur[s.id], abs=1e-3)
        np.testing.assert_array_equal(c.load_audio()[0], read_audio(d.wav[s.id]))


def test_round_trip_data_dir(small, tmp_path):
    """data dir -> lhotse -> data dir: the same files, the same audio entries."""
    m = tmp_path / "m"
    data_dir_to_lhotse(small, recordings=m / "r.jsonl.gz", supervisions=m / "s.jsonl.gz", cuts=m / "c.jsonl.gz")
    lhotse_to_data_dir(tmp_path / "back", recordings=m / "r.jsonl.gz", supervisions=m / "s.jsonl.gz")
    lhotse_to_data_dir(tmp_path / "back_cuts", cuts=m / "c.jsonl.gz")
    for back in ("back", "back_cuts"):
        for f in FILES:
            assert (tmp_path / back / f).read_text() == (small / f).read_text(), (back, f)
        assert not (tmp_path / back / AUDIO_SUBDIR).exists()


def _lhotse_manifests(d, m: Path):
    """Manifests built with lhotse's API over the data dir's files: ids that start with the speaker."""
    recs = RecordingSet.from_recordings(Recording.from_file(d.wav[u], recording_id=u) for u in d.utts)
    sups = SupervisionSet.from_segments(
        SupervisionSegment(id=u, recording_id=u, start=0, duration=recs[u].duration, channel=0, text=d.text[u],
                           speaker=d.utt2spk[u]) for u in d.utts)
    m.mkdir(exist_ok=True)
    recs.to_file(m / "r.jsonl.gz")
    sups.to_file(m / "s.jsonl.gz")
    CutSet.from_manifests(recordings=recs, supervisions=sups).to_file(m / "c.jsonl.gz")
    return recs, sups


def test_round_trip_lhotse(small, tmp_path, capsys):
    """lhotse's own manifests -> data dir (validates; the same samples) -> lhotse: equal manifests."""
    d = load_data_dir(small)
    recs, sups = _lhotse_manifests(d, tmp_path / "m")
    out = tmp_path / "dir"
    assert main(["data", "from-lhotse", "--recordings", str(tmp_path / "m/r.jsonl.gz"), "--supervisions",
                 str(tmp_path / "m/s.jsonl.gz"), str(out)]) == 0
    assert validate(out) == 0 and f"{out}: OK" in capsys.readouterr().out
    got = load_data_dir(out)
    assert got.wav == d.wav and got.text == d.text and got.utt2spk == d.utt2spk
    for u in got.utts:
        np.testing.assert_array_equal(read_audio(got.wav[u]), recs[u].load_audio()[0])
    data_dir_to_lhotse(out, recordings=tmp_path / "r2.jsonl.gz", supervisions=tmp_path / "s2.jsonl.gz")
    assert [r.to_dict() for r in load_manifest(tmp_path / "r2.jsonl.gz")] == [r.to_dict() for r in recs]
    assert [s.to_dict() for s in load_manifest(tmp_path / "s2.jsonl.gz")] == [s.to_dict() for s in sups]


def test_parts_channels_and_rates(small, tmp_path, capsys):
    """Supervisions that are parts of a recording, of one channel of a stereo recording at 8 kHz, and a speed
    perturbed one: each written as its own file holding lhotse's samples; the data dir validates."""
    d = load_data_dir(small)
    a, b, c = (read_audio(d.wav[u]) for u in d.utts[:3])
    gap = np.zeros(4000, np.float32)
    long = np.concatenate([gap, a, gap, b, gap])
    sf.write(tmp_path / "long.wav", long, 16000, subtype="PCM_16")
    import soxr
    left, right = soxr.resample(b, 16000, 8000), soxr.resample(c, 16000, 8000)
    n = max(len(left), len(right))
    stereo = np.stack([np.pad(left, (0, n - len(left))), np.pad(right, (0, n - len(right)))], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 8000, subtype="PCM_16")
    r_long = Recording.from_file(tmp_path / "long.wav", recording_id="meeting1")
    r_st = Recording.from_file(tmp_path / "stereo.wav", recording_id="call1")
    r_sp = Recording.from_file(d.wav[d.utts[0]], recording_id="read1").perturb_speed(1.1)
    t0, t1 = len(gap) / 16000, (2 * len(gap) + len(a)) / 16000
    sups = [
        SupervisionSegment(id="meeting1-a", recording_id="meeting1", start=t0, duration=len(a) / 16000, channel=0,
                           text="FIRST PART", speaker="alice"),
        SupervisionSegment(id="meeting1-b", recording_id="meeting1", start=t1, duration=len(b) / 16000, channel=0,
                           text="SECOND PART", speaker=None),  # no speaker: the recording's id
        SupervisionSegment(id="call1-right", recording_id="call1", start=0, duration=len(right) / 8000, channel=1,
                           text="THE RIGHT\nCHANNEL", speaker="bob"),
        SupervisionSegment(id=r_sp.id, recording_id=r_sp.id, start=0, duration=r_sp.duration, channel=0,
                           text="FASTER", speaker="carol"),
    ]
    m = tmp_path / "m"
    m.mkdir()
    RecordingSet.from_recordings([r_long, r_st, r_sp]).to_file(m / "r.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(m / "s.jsonl.gz")
    out = tmp_path / "dir"
    lhotse_to_data_dir(out, recordings=m / "r.jsonl.gz", supervisions=m / "s.jsonl.gz")
    assert validate(out) == 0, capsys.readouterr()
    got = load_data_dir(out)
    assert got.utts == sorted(["alice-meeting1-a", "meeting1-b", "bob-call1-right", f"carol-{r_sp.id}"])
    assert got.utt2spk["meeting1-b"] == "meeting1" and got.text["bob-call1-right"] == "THE RIGHT CHANNEL"
    cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings([r_long, r_st, r_sp]),
                                 supervisions=SupervisionSet.from_segments(sups)).trim_to_supervisions()
    by_sup = {c.supervisions[0].id: c for c in cuts}
    for utt, sup in zip(["alice-meeting1-a", "meeting1-b", "bob-call1-right", f"carol-{r_sp.id}"], sups):
        assert Path(got.wav[utt]).parent == out.resolve() / AUDIO_SUBDIR
        x, sr = sf.read(got.wav[utt], dtype="float32")
        ref = by_sup[sup.id].load_audio()
        np.testing.assert_array_equal(x, ref[sup.channel if ref.shape[0] > 1 else 0])
        assert got.utt2dur[utt] == pytest.approx(len(x) / sr, abs=1e-3)
    np.testing.assert_array_equal(read_audio(got.wav["alice-meeting1-a"]), np.round(a * 32768) / 32768)
    assert sf.info(got.wav["bob-call1-right"]).samplerate == 8000  # kept; sslseq resamples when reading
    assert len(read_audio(got.wav["bob-call1-right"])) == pytest.approx(2 * len(right), abs=2)


def test_two_channels_of_one_supervision_are_averaged(tmp_path):
    x = np.random.default_rng(0).integers(-3000, 3000, (8000, 2)).astype(np.int16)
    sf.write(tmp_path / "st.wav", x, 16000, subtype="PCM_16")
    rec = Recording.from_file(tmp_path / "st.wav", recording_id="st")
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "r.jsonl.gz")
    lhotse_to_data_dir(tmp_path / "d", recordings=tmp_path / "r.jsonl.gz")  # unlabeled: all channels
    got = load_data_dir(tmp_path / "d")
    assert got.utts == ["st"] and got.text == {} and not (tmp_path / "d/text").exists()
    np.testing.assert_allclose(read_audio(got.wav["st"]), x.astype(np.float32).mean(axis=1) / 32768, atol=1e-7)


def test_unlabeled_recordings_and_cuts(small, tmp_path):
    d = load_data_dir(small)
    recs, _ = _lhotse_manifests(d, tmp_path / "m")
    CutSet.from_manifests(recordings=recs).to_file(tmp_path / "m/uc.jsonl.gz")
    for name, kw in (("rec", dict(recordings=tmp_path / "m/r.jsonl.gz")), ("cut", dict(cuts=tmp_path / "m/uc.jsonl.gz"))):
        out = tmp_path / name
        lhotse_to_data_dir(out, **kw)
        assert validate(out) == 0
        got = load_data_dir(out)
        assert not (out / "text").exists()
        ids = {u: u if name == "rec" else f"{u}-{i}" for i, u in enumerate(d.utts)}  # a cut's id: from_manifests'
        assert got.wav == {ids[u]: d.wav[u] for u in d.utts}
        assert got.utt2spk == {ids[u]: u for u in d.utts}  # speaker unknown: the recording's id


def test_command_sources_need_allow_pipes(small, tmp_path, capsys):
    d = load_data_dir(small)
    u = d.utts[0]
    rec = Recording.from_file(d.wav[u], recording_id=u)
    rec = Recording(id=u, sources=[AudioSource(type="command", channels=[0], source=f"cat {d.wav[u]}")],
                    sampling_rate=rec.sampling_rate, num_samples=rec.num_samples, duration=rec.duration)
    RecordingSet.from_recordings([rec]).to_file(tmp_path / "r.jsonl.gz")
    lhotse_to_data_dir(tmp_path / "d", recordings=tmp_path / "r.jsonl.gz")
    assert (tmp_path / "d/wav.scp").read_text() == f"{u} cat {d.wav[u]} |\n"
    assert validate(tmp_path / "d") == 1 and "--allow-pipes" in capsys.readouterr().out
    assert validate(tmp_path / "d", "--allow-pipes") == 0
    np.testing.assert_array_equal(read_audio(f"cat {d.wav[u]} |", allow_pipes=True), rec.load_audio()[0])
    with pytest.raises(SslseqError, match=r"wav.scp:1: .*pipe command; pass --allow-pipes"):
        data_dir_to_lhotse(tmp_path / "d", cuts=tmp_path / "c.jsonl.gz")
    data_dir_to_lhotse(tmp_path / "d", cuts=tmp_path / "c.jsonl.gz", allow_pipes=True)
    (c,) = load_manifest(tmp_path / "c.jsonl.gz")
    assert c.recording.sources[0].type == "command" and c.recording.num_samples == rec.num_samples


def _write_lines(path: Path, rows) -> None:
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def test_errors_name_the_manifest_and_item(small, tmp_path):
    d = load_data_dir(small)
    recs, sups = _lhotse_manifests(d, tmp_path / "m")
    m = tmp_path / "m"
    rows = [r.to_dict() for r in recs]
    _write_lines(m / "bad.jsonl.gz", [rows[0], '{"id": "x", "sources": [', rows[1]])
    with pytest.raises(SslseqError, match=r"bad.jsonl.gz:2: not JSON"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "bad.jsonl.gz")
    _write_lines(m / "bad.jsonl.gz", [rows[0], {"id": "x", "sources": []}])
    with pytest.raises(SslseqError, match=r"bad.jsonl.gz:2: not a valid lhotse recording \(TypeError: .*'sampling_rate'.*id 'x'"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "bad.jsonl.gz")
    with pytest.raises(SslseqError, match=r"s.jsonl.gz:1: a lhotse supervision, not a recording .*--supervisions"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "s.jsonl.gz")
    with pytest.raises(SslseqError, match=r"c.jsonl.gz:1: a lhotse cut, not a recording .*--cuts"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "c.jsonl.gz")
    with pytest.raises(SslseqError, match=r"nothere.jsonl.gz: recording manifest not found"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "nothere.jsonl.gz")
    # a recording whose file is gone
    rows[1]["sources"][0]["source"] = str(tmp_path / "gone.wav")
    _write_lines(m / "r_gone.jsonl.gz", rows)
    with pytest.raises(SslseqError, match=rf"s.jsonl.gz:2: recording {d.utts[1]} \(\S+r_gone.jsonl.gz:2\): audio file "
                                          rf"not found: {tmp_path / 'gone.wav'}"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "r_gone.jsonl.gz", supervisions=m / "s.jsonl.gz")
    # cuts: a part of a recording whose file is gone; a padded (mixed) cut
    gone = Recording.from_dict(rows[1])
    sup = SupervisionSegment(id="part", recording_id=gone.id, start=0.1, duration=0.5, text="A", speaker="s")
    cut = CutSet.from_manifests(recordings=RecordingSet.from_recordings([gone]),
                                supervisions=SupervisionSet.from_segments([sup])).trim_to_supervisions()
    cut.to_file(m / "c_gone.jsonl.gz")
    with pytest.raises(SslseqError, match=rf"c_gone.jsonl.gz:1: cut \S+: recording {gone.id}: audio file not found"):
        lhotse_to_data_dir(tmp_path / "o", cuts=m / "c_gone.jsonl.gz")
    CutSet.from_cuts([c.pad(duration=c.duration + 1) for c in CutSet.from_file(m / "c.jsonl.gz")]).to_file(m / "p.jsonl.gz")
    with pytest.raises(SslseqError, match=r"p.jsonl.gz:1: cut \S+ is a MixedCut \(padded or mixed audio\)"):
        lhotse_to_data_dir(tmp_path / "o", cuts=m / "p.jsonl.gz")
    # a supervision of an unknown recording; one without text among labeled ones; a span outside its recording
    srows = [s.to_dict() for s in sups]
    for change, msg in (
        ({"recording_id": "nope"}, r"s2.jsonl.gz:2: supervision .*: recording 'nope' is not in"),
        ({"text": None}, r"s2.jsonl.gz:2: .* has no text while 3 other supervision\(s\) have one"),
        ({"start": 30.0}, r"s2.jsonl.gz:2: span 30.000-.* is not inside recording"),
    ):
        _write_lines(m / "s2.jsonl.gz", srows[:1] + [{**srows[1], **change}] + srows[2:])
        with pytest.raises(SslseqError, match=msg):
            lhotse_to_data_dir(tmp_path / "o", recordings=m / "r.jsonl.gz", supervisions=m / "s2.jsonl.gz")
    # ids that start with their speaker's id but do not sort with it ("ab-2" of "ab" before "ac-1" of "a")
    _write_lines(m / "s3.jsonl.gz", [{**srows[0], "id": "ac-1", "speaker": "a"}, {**srows[1], "id": "ab-2", "speaker": "ab"}])
    with pytest.raises(SslseqError, match=r"s3.jsonl.gz: the utterance ids do not sort with their speakers.*\n.*ac-1: "
                                          r"speaker 'a' sorts before .* 'ab'"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "r.jsonl.gz", supervisions=m / "s3.jsonl.gz")
    assert not (tmp_path / "o").exists()  # nothing written on an error
    with pytest.raises(SslseqError, match="either --recordings .* or --cuts"):
        lhotse_to_data_dir(tmp_path / "o", recordings=m / "r.jsonl.gz", cuts=m / "c.jsonl.gz")
    # to-lhotse: an audio file that is gone
    bad = tmp_path / "bad_dir"
    shutil.copytree(small, bad)
    (bad / "wav.scp").write_text((bad / "wav.scp").read_text().replace(d.wav[d.utts[2]], str(tmp_path / "gone.wav")))
    with pytest.raises(SslseqError, match=rf"wav.scp:3: {d.utts[2]}: audio file not found"):
        data_dir_to_lhotse(bad, cuts=tmp_path / "c.jsonl.gz")


def test_without_lhotse_one_line_error(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lhotse", None)  # import lhotse raises ImportError
    with pytest.raises(SslseqError, match=r"^lhotse is not installed; pip install lhotse"):
        data_dir_to_lhotse(small, cuts=tmp_path / "c.jsonl.gz")
    with pytest.raises(SslseqError, match=r"^lhotse is not installed; pip install lhotse"):
        lhotse_to_data_dir(tmp_path / "o", cuts=tmp_path / "c.jsonl.gz")


RUN = Path(__file__).resolve().parents[1] / "egs" / "lhotse" / "run.sh"


def _run(*args: str):
    import os
    import subprocess

    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "SSLSEQ_NO_PROGRESS": "1"})


def test_recipe_stages_0_1_on_manifests(tiny_data, tmp_path):
    """egs/lhotse/run.sh: stage 0 makes the data dirs from lhotse's file names (cuts for train,
    recordings + supervisions for dev and test), stage 1 validates them, draws the CTC subset and
    builds the LM from the train transcripts. Stages 2+ are the shared recipe's, as for any corpus."""
    m = tmp_path / "manifests"
    data_dir_to_lhotse(tiny_data / "train", cuts=m / "synth_cuts_train.jsonl.gz")
    for s in ("dev", "test"):
        data_dir_to_lhotse(tiny_data / s, recordings=m / f"synth_recordings_{s}.jsonl.gz",
                           supervisions=m / f"synth_supervisions_{s}.jsonl.gz")
    work = tmp_path / "work"
    r = _run("--manifest-dir", str(m), "--prefix", "synth", "--train-part", "train", "--dev-part", "dev",
             "--test-parts", "dev test", "--tiny", "true", "--workdir", str(work), "--stop-stage", "1")
    assert r.returncode == 0, r.stderr[-6000:]
    for s in ("train", "dev", "test"):
        for f in FILES:
            assert (work / "data" / s / f).read_text() == (tiny_data / s / f).read_text(), (s, f)
    assert (work / "data" / "train_1min" / "text").is_file() and (work / "data" / "lm" / "lm.arpa").is_file()
    r = _run("--manifest-dir", str(m), "--prefix", "synth", "--train-part", "train", "--dev-part", "valid",
             "--workdir", str(work))
    assert r.returncode != 0 and "neither synth_cuts_valid.jsonl.gz nor synth_recordings_valid.jsonl.gz" in r.stderr
    r = _run("--manifest-dir", str(m), "--train-part", "train", "--dev-part", "dev", "--workdir", str(work))
    assert r.returncode != 0 and "--prefix NAME" in r.stderr


def test_other_manifest_formats_and_cut_spans(small, tmp_path):
    """.jsonl (plain) and .json manifests read the same; a supervision a cut holds only part of is an error."""
    d = load_data_dir(small)
    recs, sups = _lhotse_manifests(d, tmp_path / "m")
    lhotse_to_data_dir(tmp_path / "ref", recordings=tmp_path / "m/r.jsonl.gz", supervisions=tmp_path / "m/s.jsonl.gz")
    for ext in ("jsonl", "json"):
        recs.to_file(tmp_path / f"r.{ext}")
        sups.to_file(tmp_path / f"s.{ext}")
        lhotse_to_data_dir(tmp_path / ext, recordings=tmp_path / f"r.{ext}", supervisions=tmp_path / f"s.{ext}")
        for f in FILES:
            assert (tmp_path / ext / f).read_text() == (tmp_path / "ref" / f).read_text()
    (tmp_path / "bad.json").write_text('[{"id": "x"}]')
    with pytest.raises(SslseqError, match=r"bad.json: not a lhotse manifest"):
        lhotse_to_data_dir(tmp_path / "o", recordings=tmp_path / "bad.json")
    u = d.utts[0]
    part = CutSet.from_manifests(recordings=recs, supervisions=sups).subset(first=1)
    part = CutSet.from_cuts([c.truncate(duration=c.duration / 2) for c in part])  # keeps the whole supervision
    part.to_file(tmp_path / "half.jsonl.gz")
    with pytest.raises(SslseqError, match=r"half.jsonl.gz:1: cut \S+: span 0.000-.* is not inside cut .*"
                                          r"trim_to_supervisions"):
        lhotse_to_data_dir(tmp_path / "o", cuts=tmp_path / "half.jsonl.gz")
    assert u in part[0].supervisions[0].id
