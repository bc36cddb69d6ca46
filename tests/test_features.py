"""Kaldi-compatible fbank/MFCC/deltas against kaldi-native-fbank and a literal float64 reference;
feature dumping into the sharded store (on CUDA against the CPU: tests/test_cuda.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sslseq.features import kaldi as K
from sslseq.models.layer_features import LayerFeatures
from sslseq.utils import SslseqError

knf = pytest.importorskip("kaldi_native_fbank")

SR = 16000
# knf computes in float32, so its own rounding (worst in narrow low mel bins of frames whose
# energy sits elsewhere) bounds the agreement: measured ~4e-4 abs on these signals.
KNF_ATOL, KNF_RTOL = 1e-3, 1e-4


def speechlike(n: int, seed: int) -> np.ndarray:
    """Chirp + harmonics + noise, with digital silence and a near-silent stretch (log floor paths)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    dur = max(n / SR, 1e-3)
    f0 = 120 + 80 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6))
    x = x + 0.1 * np.sin(2 * np.pi * (300 * t + 3000 * t**2 / dur)) + 0.02 * rng.standard_normal(n)
    x[n // 5 : n // 5 + 900] = 0.0
    x[n // 2 : n // 2 + 500] *= 1e-4
    return np.clip(x, -1, 1).astype(np.float32)


def knf_feats(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "fbank":
        o = knf.FbankOptions()
        o.mel_opts.num_bins = 80
    else:
        o = knf.MfccOptions()
        o.mel_opts.num_bins = 23
        o.num_ceps = 13
        o.use_energy = True
        o.cepstral_lifter = 22.0
    o.frame_opts.dither = 0.0
    o.frame_opts.snip_edges = True
    o.mel_opts.low_freq = 20.0
    o.mel_opts.high_freq = 0.0
    comp = knf.OnlineFbank(o) if kind == "fbank" else knf.OnlineMfcc(o)
    comp.accept_waveform(SR, (x.astype(np.float64) * 32768).astype(np.float32))
    comp.input_finished()
    dim = 80 if kind == "fbank" else 13
    return np.array([comp.get_frame(i) for i in range(comp.num_frames_ready)], dtype=np.float32).reshape(-1, dim)


def literal_kaldi(x: np.ndarray, kind: str) -> np.ndarray:
    """Kaldi's per-frame algorithm written out step by step in float64 (independent of the batched code)."""
    nbins = 80 if kind == "fbank" else 23
    s = x.astype(np.float64) * 32768
    n_fft = 512
    # mel filters, bin by bin as Kaldi's MelBanks
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(20.0), mel(SR / 2)
    delta = (hi - lo) / (nbins + 1)
    banks = np.zeros((nbins, n_fft // 2 + 1))
    for b in range(nbins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        for i in range(n_fft // 2):
            m = mel(i * SR / n_fft)
            if left < m < right:
                banks[b, i] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    win = np.array([(0.5 - 0.5 * math.cos(2 * math.pi * i / 399)) ** 0.85 for i in range(400)])
    out = []
    for f in range(K.num_frames(len(s))):
        w = s[f * 160 : f * 160 + 400].copy()
        w -= w.mean()
        log_energy = math.log(max(float(w @ w), K.FLT_EPSILON))
        for i in range(399, 0, -1):
            w[i] -= 0.97 * w[i - 1]
        w[0] -= 0.97 * w[0]
        w *= win
        spec = np.fft.rfft(w, n=n_fft)
        logmel = np.log(np.maximum(banks @ (spec.real**2 + spec.imag**2), K.FLT_EPSILON))
        if kind == "fbank":
            out.append(logmel)
            continue
        ceps = np.array(
            [
                math.sqrt((1.0 if k == 0 else 2.0) / nbins)
                * sum(logmel[j] * math.cos(math.pi / nbins * (j + 0.5) * k) for j in range(nbins))
                for k in range(13)
            ]
        )
        ceps *= 1 + 11.0 * np.sin(np.pi * np.arange(13) / 22.0)
        ceps[0] = log_energy
        out.append(ceps)
    return np.array(out).reshape(-1, 80 if kind == "fbank" else 13)


def literal_deltas(x: np.ndarray, window: int = 2) -> np.ndarray:
    """Kaldi add-deltas order 2: delta = sum_j j x[clamp(t+j)] / (2 sum j^2); delta2 uses the convolved window."""
    t = len(x)
    norm = 2 * sum(j * j for j in range(1, window + 1))
    w1 = {j: j / norm for j in range(-window, window + 1)}
    w2: dict[int, float] = {}
    for a, va in w1.items():
        for b, vb in w1.items():
            w2[a + b] = w2.get(a + b, 0.0) + va * vb
    clamp = lambda i: min(max(i, 0), t - 1)  # noqa: E731
    d1 = np.array([sum(v * x[clamp(i + j)] for j, v in w1.items()) for i in range(t)])
    d2 = np.array([sum(v * x[clamp(i + j)] for j, v in w2.items()) for i in range(t)])
    return np.concatenate([x, d1, d2], axis=1)


LENGTHS = [SR * 2 + 37, 400, 5000, SR + 160 * 7 + 3]


def batch(xs: list[np.ndarray], dtype=torch.float32, pad_value: float = 0.0):
    n = max(len(x) for x in xs)
    w = torch.full((len(xs), n), pad_value, dtype=dtype)
    for i, x in enumerate(xs):
        w[i, : len(x)] = torch.from_numpy(x).to(dtype)
    return w, torch.tensor([len(x) for x in xs])


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_matches_kaldi_native_fbank_batched(kind):
    xs = [speechlike(n, seed=i) for i, n in enumerate(LENGTHS)]
    refs = [knf_feats(x, kind) for x in xs]
    for dtype in (torch.float32, torch.float64):
        w, lens = batch(xs, dtype)
        fn = K.fbank if kind == "fbank" else (lambda a, b: K.mfcc(a, b, deltas=False))
        feats, flens = fn(w, lens)
        assert feats.dtype == dtype
        assert flens.tolist() == [len(r) for r in refs] == [K.num_frames(n) for n in LENGTHS]
        worst = 0.0
        for f, r, n in zip(feats, refs, flens.tolist()):
            diff = np.abs(f[:n].double().numpy() - r)
            worst = max(worst, float(diff.max()))
            assert np.all(diff <= KNF_ATOL + KNF_RTOL * np.abs(r)), (kind, dtype, diff.max())
            assert torch.all(f[n:] == 0)
        print(f"{kind} {dtype}: max |ours - knf| = {worst:.2e}")


@pytest.mark.parametrize("kind", ["fbank", "mfcc"])
def test_float64_matches_literal_reference(kind):
    x = speechlike(SR // 2 + 77, seed=3)
    ref = literal_kaldi(x, kind)
    w = torch.from_numpy(x).double()[None]
    lens = torch.tensor([len(x)])
    for method in ("fft", "matmul"):
        if kind == "fbank":
            f, _ = K.fbank(w, lens, method=method)
        else:
            f, _ = K.mfcc(w, lens, deltas=False, method=method)
        assert np.abs(f[0].numpy() - ref).max() < 1e-8, method
    # float32 stays close to the float64 result
    f32, _ = (K.fbank if kind == "fbank" else lambda a, b: K.mfcc(a, b, deltas=False))(w.float(), lens)
    assert np.abs(f32[0].double().numpy() - ref).max() < 2e-3


def test_mel_banks_match_knf():
    for nbins in (23, 80):
        mo = knf.MelBanksOptions()
        mo.num_bins = nbins
        ref = knf.MelBanks(opts=mo, frame_opts=knf.FrameExtractionOptions()).get_matrix()
        ours = K.mel_banks(K.FbankOptions(num_mel_bins=nbins)).T.numpy()
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 1e-4  # knf builds them in float32


def test_batched_equals_unbatched_and_padding_does_not_leak():
    xs = [speechlike(n, seed=10 + i) for i, n in enumerate(LENGTHS)]
    w, lens = batch(xs, torch.float64, pad_value=0.9)  # loud garbage in the padding
    for fn in (K.fbank, K.mfcc):
        feats, flens = fn(w, lens)
        for i, x in enumerate(xs):
            single, sl = fn(torch.from_numpy(x).double()[None], torch.tensor([len(x)]))
            n = int(flens[i])
            assert n == int(sl[0])
            torch.testing.assert_close(feats[i, :n], single[0], rtol=0, atol=1e-9)


def test_short_and_empty_inputs():
    assert K.num_frames(399) == 0 and K.num_frames(400) == 1 and K.num_frames(559) == 1 and K.num_frames(560) == 2
    f, n = K.mfcc(torch.zeros(2, 300), torch.tensor([300, 100]))
    assert f.shape == (2, 0, 39) and n.tolist() == [0, 0]
    f, n = K.fbank(torch.zeros(1, 1000), torch.tensor([1000]))  # digital silence: log floor everywhere
    assert torch.allclose(f, torch.full_like(f, math.log(K.FLT_EPSILON)))


def test_int16_input_is_unscaled():
    x = speechlike(4000, seed=5)
    i16 = torch.from_numpy(np.round(x * 32767).astype(np.int16))[None]
    f_int, _ = K.fbank(i16, torch.tensor([4000]))
    f_flt, _ = K.fbank(i16.double() / 32768, torch.tensor([4000]))
    torch.testing.assert_close(f_int.double(), f_flt, atol=1e-4, rtol=0)


def test_deltas_match_kaldi_formula_and_knf():
    rng = np.random.default_rng(0)
    lens = [13, 1, 2, 6]
    xs = [rng.standard_normal((n, 5)) for n in lens]
    padded = torch.full((len(xs), max(lens), 5), 1e3, dtype=torch.float64)  # garbage padding
    for i, x in enumerate(xs):
        padded[i, : len(x)] = torch.from_numpy(x)
    out = K.add_deltas(padded, torch.tensor(lens))
    assert out.shape == (4, 13, 15)
    for i, x in enumerate(xs):
        ref = literal_deltas(x)
        np.testing.assert_allclose(out[i, : len(x)].numpy(), ref, rtol=0, atol=1e-12)
        assert torch.all(out[i, len(x) :] == 0)
        ours2d = K.add_deltas(torch.from_numpy(x))  # (T, D) form
        np.testing.assert_allclose(ours2d.numpy(), ref, atol=1e-12)
        kref = knf.compute_deltas(knf.DeltaOptions(), x.astype(np.float32))
        np.testing.assert_allclose(ref, kref, atol=1e-5)


def test_mfcc39_layout():
    x = speechlike(SR, seed=7)
    w, lens = torch.from_numpy(x)[None], torch.tensor([SR])
    f39, n = K.mfcc(w, lens)
    f13, _ = K.mfcc(w, lens, deltas=False)
    assert f39.shape == (1, 98, 39)
    torch.testing.assert_close(f39[..., :13], f13)
    torch.testing.assert_close(f39, K.add_deltas(f13, n))


# ---------------------------------------------------------------- dumping


def make_data_dir(root: Path, lengths: dict[str, int], bad: tuple[str, ...] = ()) -> Path:
    d = root / "data"
    (root / "wav").mkdir(parents=True)
    d.mkdir()
    wav, u2s, u2d = [], [], []
    for i, (utt, n) in enumerate(sorted(lengths.items())):
        path = root / "wav" / f"{utt}.wav"
        if utt in bad:
            path.write_bytes(b"RIFF\x00\x00garbage, not a wav file" * 4)
        else:
            sf.write(path, speechlike(n, seed=100 + i), SR, subtype="PCM_16")
        wav.append(f"{utt} {path}\n")
        u2s.append(f"{utt} {utt.split('-')[0]}\n")
        u2d.append(f"{utt} {n / SR:.3f}\n")
    for name, lines in (("wav.scp", wav), ("utt2spk", u2s), ("utt2dur", u2d)):
        (d / name).write_text("".join(lines))
    return d


LENS = {"s1-a": 16000, "s1-b": 7000, "s1-c": 33000, "s2-a": 900, "s2-b": 20000, "s2-c": 12345, "s3-a": 4100}


def test_dump_mfcc_order_values_resume(tmp_path, monkeypatch):
    from sslseq.audio import read_audio
    from sslseq.features import dump
    from sslseq.features.store import FeatureStore

    data = make_data_dir(tmp_path, LENS)
    out = tmp_path / "feats"
    dump.dump_features(data, out, feat_type="mfcc", nj=2, batch_seconds=2.5)  # several batches per shard
    fs = FeatureStore(out)
    assert fs.meta["type"] == "mfcc" and fs.dim == 39 and fs.frame_rate == 100.0 and fs.nj == 2
    assert fs.utts == sorted(LENS)
    for utt, frames in fs:
        wave = read_audio(str(tmp_path / "wav" / f"{utt}.wav"))
        ref, n = K.mfcc(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
        assert len(frames) == int(n[0]) == K.num_frames(LENS[utt])
        np.testing.assert_allclose(frames, ref[0].numpy(), atol=1e-4, rtol=0)

    # resume: complete shards are not recomputed; a missing one is
    stamp = (out / "0_2.npy").stat().st_mtime_ns
    (out / "1_2.npy").unlink()
    calls = []
    real = dump._make_extractor

    def spy(*a, **k):
        ex = real(*a, **k)
        fn = ex.fn
        ex.fn = lambda w, n: (calls.append(len(n)), fn(w, n))[1]
        return ex

    monkeypatch.setattr(dump, "_make_extractor", spy)
    dump.dump_features(data, out, feat_type="mfcc", nj=2)
    assert (out / "0_2.npy").stat().st_mtime_ns == stamp
    assert sum(calls) == 3  # only shard 1's utterances
    assert FeatureStore(out).utts == sorted(LENS)

    with pytest.raises(SslseqError, match="already holds other features"):
        dump.dump_features(data, out, feat_type="fbank", nj=2)


def test_damaged_shards_are_named_and_dumped_again(tmp_path):
    import hashlib

    from sslseq.features import dump
    from sslseq.features.store import FeatureStore, check_complete

    data = make_data_dir(tmp_path, {"a-1": 8000, "a-2": 9000, "b-1": 7000, "b-2": 5000})
    out = tmp_path / "feats"
    dump.dump_features(data, out, feat_type="mfcc", nj=2)
    sums = (out / "0_2.sums").read_text().split("\n")[:3]
    assert [line.split()[2] for line in sums] == ["0_2.utts", "0_2.len", "0_2.npy"]
    npy = out / "0_2.npy"
    assert sums[2].split()[:2] == [str(npy.stat().st_size), hashlib.sha256(npy.read_bytes()).hexdigest()]
    good = npy.read_bytes()
    check_complete(out, 2, verify=True)

    # truncated: every reader names the file, with the sizes and what to do
    npy.write_bytes(good[: len(good) // 2])
    for call in (lambda: FeatureStore(out), lambda: check_complete(out, 2)):
        with pytest.raises(SslseqError, match=rf"{npy}: {len(good) // 2} bytes, but {len(good)} were written "
                                              r"\(the file is cut short\); dump it again: rerun the recipe's stage 2"):
            call()
    # the same size, other content: only the checksum (feats check) sees it
    npy.write_bytes(good[:-4] + b"\x00\x00\x80\x7f")
    assert len(FeatureStore(out)) == 4
    with pytest.raises(SslseqError, match=rf"{npy}: its SHA-256 differs from the one in 0_2.sums"):
        check_complete(out, 2, verify=True)
    # a dump rewrites the damaged shard only
    stamp = (out / "1_2.npy").stat().st_mtime_ns
    dump.dump_features(data, out, feat_type="mfcc", nj=2)
    assert npy.read_bytes() == good and (out / "1_2.npy").stat().st_mtime_ns == stamp
    check_complete(out, 2, verify=True)

    # a store written before .sums existed still opens; its truncated .npy is found from its header
    for f in out.glob("*.sums"):
        f.unlink()
    assert len(FeatureStore(out)) == 4
    npy.write_bytes(good[:-100])
    with pytest.raises(SslseqError, match=rf"{npy}: {len(good) - 100} bytes, but its header \(shape \(\d+, 39\)\) "
                                          rf"needs {len(good)} \(the file is cut short\)"):
        FeatureStore(out)


def test_dump_bad_utterances(tmp_path):
    from sslseq.features import dump
    from sslseq.features.store import FeatureStore

    data = make_data_dir(tmp_path, {"a-1": 8000, "a-2": 300, "b-1": 9000, "b-2": 5000}, bad=("b-1",))
    with pytest.raises(SslseqError, match=r"a-2: 0\.019 s of audio is shorter than one 25 ms frame.*\(1 more in this "
                                          r"batch\); 'sslseq data validate .*' lists every such utterance"):
        dump.dump_features(data, tmp_path / "f1", feat_type="fbank")
    assert not (tmp_path / "f1" / "0_1.npy").exists()
    dump.dump_features(data, tmp_path / "f2", feat_type="fbank", skip_bad=True)
    fs = FeatureStore(tmp_path / "f2")
    assert fs.utts == ["a-1", "b-2"] and fs.dim == 80
    lines = (tmp_path / "f2" / "bad_utts.0_1").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["a-2", "b-1"]
    assert "wav.scp:3: b-1" in lines[1]  # file:line: utt


class FakeModel(torch.nn.Module):
    """Stands in for a trained encoder: 20 ms frames, 3 hidden states of dim 4 derived from the audio."""

    frame_rate = 50.0

    def extract_features(self, wav, wav_lens):
        frames = wav[:, : wav.shape[1] // 320 * 320].reshape(wav.shape[0], -1, 320)
        base = torch.stack([frames.mean(-1), frames.std(-1), frames.abs().max(-1).values, frames[..., 0]], -1)
        return [base * (i + 1) for i in range(3)], wav_lens // 320


def test_dump_layer_with_model_contract(tmp_path, monkeypatch):
    """Exercises the sslseq.models.load contract with a stand-in model (a real one needs training)."""
    from sslseq.features import dump
    from sslseq.features.store import FeatureStore
    from sslseq.models import layer_features

    exp = tmp_path / "exp"
    exp.mkdir()
    monkeypatch.setattr(layer_features, "load", lambda path: FakeModel())
    data = make_data_dir(tmp_path, {"a-1": 8000, "a-2": 16000, "b-1": 9000})
    lf = LayerFeatures(exp, 2, torch.device("cpu"))
    dump.dump_features(data, tmp_path / "f", feat_type="layer", layer_features=lf)
    fs = FeatureStore(tmp_path / "f")
    assert fs.dim == 4 and fs.frame_rate == 50.0 and fs.meta["layer"] == 2
    assert fs.lengths.tolist() == [25, 50, 28]
    with pytest.raises(SslseqError, match="--layer 3 is out of range.*0..2"):
        LayerFeatures(exp, 3, torch.device("cpu"))


def test_dump_layer_real_model(tmp_path):
    """A tiny randomly initialised HuBERT saved as an experiment dir, through sslseq.models.load."""
    from sslseq.models import build_model, model_config_dict, save_weights
    import yaml

    from sslseq.features import dump
    from sslseq.features.store import FeatureStore

    conv = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2  # HuBERT's strides: 20 ms frames
    enc = {"embed_dim": 32, "ffn_dim": 64, "num_layers": 2, "num_heads": 2, "conv_pos": 16, "conv_pos_groups": 4}
    torch.manual_seed(0)
    model = build_model({"name": "hubert", "num_classes": 10, "encoder": {"conv_layers": conv, "encoder": enc}})
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(model)}))
    save_weights(model, exp / "model.safetensors")
    data = make_data_dir(tmp_path, {"a-1": 8000, "a-2": 16000, "b-1": 9000})
    lf = LayerFeatures(exp, 2, torch.device("cpu"))
    dump.dump_features(data, tmp_path / "f", feat_type="layer", layer_features=lf)
    fs = FeatureStore(tmp_path / "f")
    assert fs.dim == 32 and fs.frame_rate == 50.0 and fs.meta["type"] == "layer"
    expected = []
    for n in (8000, 16000, 9000):  # conv output length, layer by layer
        for _, k, st in conv:
            n = (n - k) // st + 1
        expected.append(n)
    assert fs.lengths.tolist() == expected
    assert all(np.isfinite(frames).all() and frames.std() > 0 for _, frames in fs)
    with pytest.raises(SslseqError, match="--layer 3 is out of range"):
        LayerFeatures(exp, 3, torch.device("cpu"))


def test_dump_synthesized_corpus(tiny_data, tmp_path):
    """Real (espeak-ng) speech through the real data-dir and audio readers; one utterance vs knf."""
    from sslseq.audio import read_audio
    from sslseq.data.kaldi import load_data_dir
    from sslseq.features import dump
    from sslseq.features.store import FeatureStore

    dd = load_data_dir(tiny_data / "dev")
    dump.dump_features(tiny_data / "dev", tmp_path / "fbank", feat_type="fbank", nj=2)
    fs = FeatureStore(tmp_path / "fbank")
    assert fs.utts == dd.utts
    for utt, n in zip(fs.utts, fs.lengths):
        assert abs(int(n) - K.num_frames(round(dd.utt2dur[utt] * SR))) <= 1
    utt, frames = next(iter(fs))
    ref = knf_feats(read_audio(dd.wav[utt]), "fbank")
    diff = np.abs(np.asarray(frames) - ref)
    assert np.all(diff <= 2e-3 + KNF_RTOL * np.abs(ref)), diff.max()
