"""Length-bucketed batching, the speech dataset (crops, label checks, tokenization) and collate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from sslseq.data.batching import LengthBucketBatchSampler, greedy_batches, padding_ratio
from sslseq.data.dataset import SpeechDataset, collate, expected_frames
from sslseq.utils import SslseqError

SR = 16000


def _durations(n=500, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 12.0, n)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_utterance_once_and_within_limit(shuffle):
    d = _durations()
    s = LengthBucketBatchSampler(d, 40.0, shuffle=shuffle, seed=3)
    for epoch in range(3):
        batches = s.batches(epoch)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(len(d)))
        for b in batches:
            assert len(b) * d[b].max() <= 40.0 + 1e-9


def test_deterministic_and_epochs_differ():
    d = _durations()
    a = LengthBucketBatchSampler(d, 40.0, seed=7).batches(2)
    b = LengthBucketBatchSampler(d, 40.0, seed=7).batches(2)
    assert a == b
    e0 = LengthBucketBatchSampler(d, 40.0, seed=7).batches(0)
    assert e0 != a  # order differs between epochs
    # ... and so do the batch compositions (shuffling inside buckets), not only their order
    assert {tuple(sorted(x)) for x in e0} != {tuple(sorted(x)) for x in a}
    assert LengthBucketBatchSampler(d, 40.0, seed=8).batches(2) != a


def test_padding_lower_than_random_batching():
    d = _durations()
    s = LengthBucketBatchSampler(d, 40.0, seed=0)
    rng = np.random.default_rng(0)
    random_batches = greedy_batches(rng.permutation(len(d)), d, 40.0)
    bucketed = s.padding_ratio(0)
    assert bucketed < 0.1
    assert bucketed < padding_ratio(random_batches, d) / 3
    # bucket_batches=0 turns bucketing off: random batches, every utterance once, much more padding
    off = LengthBucketBatchSampler(d, 40.0, seed=0, bucket_batches=0)
    assert sorted(i for b in off.batches(0) for i in b) == list(range(len(d)))
    assert off.padding_ratio(0) > 3 * bucketed
    with pytest.raises(SslseqError, match="bucket_batches must be >= 0"):
        LengthBucketBatchSampler(d, 40.0, bucket_batches=-1)


def test_resume_position_and_shards():
    d = _durations(200)
    s = LengthBucketBatchSampler(d, 30.0, seed=1)
    s.set_epoch(4)
    it = iter(s)
    first = [next(it) for _ in range(3)]
    state = s.state_dict()
    assert state == {"epoch": 4, "batch_index": 3}
    rest = list(it)
    t = LengthBucketBatchSampler(d, 30.0, seed=1)
    t.load_state_dict(state)
    assert list(t) == rest and first + rest == s.batches(4)
    shards = [LengthBucketBatchSampler(d, 30.0, seed=1, num_shards=3, shard_id=r).batches(0) for r in range(3)]
    assert len({len(x) for x in shards}) == 1
    seen = [i for sh in shards for b in sh for i in b]
    assert len(seen) == len(set(seen))


def test_oversized_item_gets_its_own_batch():
    d = np.array([1.0, 50.0, 1.0])
    batches = LengthBucketBatchSampler(d, 10.0, shuffle=False).batches(0)
    assert [1] in batches and sorted(i for b in batches for i in b) == [0, 1, 2]


# ---------------------------------------------------------------- dataset


def _write_dir(root: Path, wavs: dict[str, np.ndarray], texts: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "wav").mkdir(exist_ok=True)
    scp, u2s, u2d, txt = [], [], [], []
    for utt in sorted(wavs):
        path = root / "wav" / f"{utt}.wav"
        sf.write(path, wavs[utt], SR, subtype="FLOAT")
        scp.append(f"{utt} {path}\n")
        u2s.append(f"{utt} spk1\n")
        u2d.append(f"{utt} {len(wavs[utt]) / SR:.4f}\n")
        if texts:
            txt.append(f"{utt} {texts[utt]}\n")
    (root / "wav.scp").write_text("".join(scp))
    (root / "utt2spk").write_text("".join(u2s))
    (root / "utt2dur").write_text("".join(u2d))
    if texts:
        (root / "text").write_text("".join(txt))
    return root


def _write_km(path: Path, utts: list[str], labels: list[np.ndarray], k: int, rate: float = 100.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(map(str, lab.tolist())) + "\n" for lab in labels))
    path.with_suffix(".utts").write_text("".join(f"{u}\n" for u in utts))
    (path.parent / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(k)))
    (path.parent / "labels.yaml").write_text(yaml.safe_dump({"label_rate": rate, "k": k, "dim": 13}))
    return path


def _block_audio(num_samples: int) -> np.ndarray:
    """Sample n holds the index of its 160-sample block (scaled): a crop's offset is readable."""
    return ((np.arange(num_samples) // 160) / 10000.0).astype(np.float32)


def test_crop_keeps_labels_aligned(tmp_path):
    n = 10 * SR + 123
    wav = _block_audio(n)
    frames = expected_frames(n, 100.0)
    data = _write_dir(tmp_path / "d", {"u1": wav, "u2": _block_audio(SR)})
    labels = [np.arange(frames) % 2000, np.arange(expected_frames(SR, 100.0))]
    km = _write_km(tmp_path / "lab" / "d.km", ["u1", "u2"], labels, k=2000)
    ds = SpeechDataset(data, labels=km, max_sample_seconds=3.0, min_sample_seconds=0.5, seed=5)
    assert ds.label_rate == 100.0 and ds.num_classes == 2000
    assert ds.durations == pytest.approx([3.0, 1.0])
    offsets = set()
    for epoch in range(6):
        item = ds[(0, epoch)]
        w, lab = item["wav"], item["labels"]
        assert len(w) == 3 * SR
        block = int(round(float(w[0]) * 10000))
        offset = block * 160
        assert offset % 320 == 0  # 50 Hz frames and 100 Hz labels stay on the grid
        assert lab[0] == block  # the first label is the one of the first cropped frame
        assert len(lab) == expected_frames(len(w), 100.0)
        assert np.array_equal(lab, np.arange(block, block + len(lab)))
        assert ds[(0, epoch)]["labels"].tolist() == lab.tolist()  # same (seed, epoch): same crop
        offsets.add(offset)
    assert len(offsets) > 1
    # Validation (no random crop) takes the start; short items are untouched.
    val = SpeechDataset(data, labels=km, max_sample_seconds=3.0, random_crop=False)
    assert val[0]["labels"][0] == 0 and len(val[1]["wav"]) == SR


def test_label_length_mismatch_names_file_line_utt(tmp_path):
    data = _write_dir(tmp_path / "d", {"a": _block_audio(SR), "b": _block_audio(2 * SR)})
    good = expected_frames(SR, 100.0)
    km = _write_km(tmp_path / "lab" / "d.km", ["a", "b"], [np.zeros(good, int), np.zeros(50, int)], k=5)
    with pytest.raises(SslseqError) as e:
        SpeechDataset(data, labels=km)
    msg = str(e.value)
    assert "d.km:2" in msg and "utterance b" in msg and "50 labels" in msg


def test_short_dropped_and_ctc_tokenized(tmp_path):
    from sslseq.data.text import DEFAULT_UNITS, CharTokenizer

    wavs = {"a": _block_audio(SR), "b": _block_audio(SR // 10), "c": _block_audio(5 * SR)}
    data = _write_dir(tmp_path / "d", wavs, {"a": "HELLO WORLD", "b": "X", "c": "LONG ONE"})
    tok = CharTokenizer(DEFAULT_UNITS)
    ds = SpeechDataset(data, tokenizer=tok, max_sample_seconds=4.0, min_sample_seconds=0.5)
    assert ds.utts == ["a"]  # b too short, c too long for CTC (never cropped)
    item = ds[0]
    assert tok.decode(item["targets"].tolist()) == "HELLO WORLD" and len(item["wav"]) == SR

    bad = _write_dir(tmp_path / "bad", {"a": _block_audio(SR)}, {"a": "hello 42"})
    with pytest.raises(SslseqError, match=r"text: utterance a: character 'h'"):
        SpeechDataset(bad, tokenizer=tok)


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec)) * SR / len(x)


def test_speed_perturbation_changes_tempo_and_pitch_per_epoch(tmp_path):
    from sslseq.audio import speed_perturb
    from sslseq.data.text import DEFAULT_UNITS, CharTokenizer

    tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(2 * SR) / SR)).astype(np.float32)
    fast = speed_perturb(tone, 1.1)
    assert abs(len(fast) - round(2 * SR / 1.1)) <= 2
    assert _peak_hz(fast) == pytest.approx(484.0, abs=2.0)  # 440 Hz played 1.1x faster
    assert _peak_hz(speed_perturb(tone, 0.9)) == pytest.approx(396.0, abs=2.0)
    assert speed_perturb(tone, 1.0) is tone

    data = _write_dir(tmp_path / "d", {"a": tone}, {"a": "HELLO"})
    tok = CharTokenizer(DEFAULT_UNITS)
    ds = SpeechDataset(data, tokenizer=tok, speed_factors=[0.9, 1.0, 1.1], seed=3)
    lengths = {epoch: len(ds[(0, epoch)]["wav"]) for epoch in range(12)}
    assert {round(2 * SR / n, 1) for n in lengths.values()} == {0.9, 1.0, 1.1}  # every speed is drawn
    assert all(len(ds[(0, e)]["wav"]) == n for e, n in lengths.items())  # same (seed, epoch): same speed
    assert ds[(0, 0)]["targets"].tolist() == tok.encode("HELLO")  # the transcript is unchanged
    with pytest.raises(SslseqError, match="must be positive"):
        SpeechDataset(data, tokenizer=tok, speed_factors=[0.0, 1.0])
    km = _write_km(tmp_path / "lab" / "d.km", ["a"], [np.zeros(expected_frames(2 * SR, 100.0), int)], k=2)
    with pytest.raises(SslseqError, match="cannot follow speed perturbation"):
        SpeechDataset(data, labels=km, speed_factors=[0.9, 1.1])


def test_collate_pads():
    items = [
        {"utt": "a", "wav": np.ones(5, np.float32), "labels": np.array([1, 2]), "targets": None, "text": None},
        {"utt": "b", "wav": np.ones(3, np.float32), "labels": np.array([3]), "targets": None, "text": None},
    ]
    b = collate(items)
    assert b["wav"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["wav_lens"].tolist() == [5, 3] and b["labels"].tolist() == [[1, 2], [3, -1]]
    assert b["label_lens"].tolist() == [2, 1] and "targets" not in b
