"""k-means targets: fitting, chunked assignment, feature-dir sampling/labelling, label checks, purity/PNMI."""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import pytest
import torch
import yaml

from sslseq.cluster.jobs import fit_kmeans_on_features, label_features
from sslseq.cluster.kmeans import assign, fit_kmeans, inertia, kmeans_plus_plus_init
from sslseq.cluster.model_file import load_kmeans
from sslseq.cluster.sampling import sample_frames
from sslseq.cluster.labels import cluster_purity_pnmi
from sslseq.data.labels import check_labels_match, read_labels
from sslseq.features.store import FeatureStore, write_meta, write_shard
from sslseq.utils import SslseqError


def blobs(n=5000, dim=8, k=6, seed=0, spread=10.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (k, dim)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(0, 1.0, (n, dim)).astype(np.float32)
    return x.astype(np.float32), y, centers


def make_feat_dir(path, lengths_per_shard, dim=8, frame_rate=50.0, seed=0):
    rng = np.random.default_rng(seed)
    nj = len(lengths_per_shard)
    write_meta(path, feat_type="mfcc", dim=dim, frame_rate=frame_rate, nj=nj)
    centers = rng.normal(0, 8, (5, dim))
    i = 0
    for rank, lengths in enumerate(lengths_per_shard):
        utts, feats = [], []
        for n in lengths:
            utts.append(f"utt{i:04d}")
            comp = rng.integers(0, 5, n)
            feats.append((centers[comp] + rng.normal(0, 1, (n, dim))).astype(np.float32))
            i += 1
        write_shard(path, rank, nj, utts, feats)
    return path


def test_recovers_blobs_and_matches_sklearn():
    from sklearn.cluster import KMeans

    x, y, centers = blobs()
    c, inert, n_iter = fit_kmeans(torch.from_numpy(x), 6, seed=0, device="cpu", verbose=False)
    best = KMeans(6, n_init=10, random_state=0).fit(x).inertia_
    assert inert <= best * 1.01
    assert math.isclose(inert, inertia(torch.from_numpy(x), c), rel_tol=1e-5)
    # every true center has a fitted centroid within noise distance, and clusters = blobs
    d = torch.cdist(torch.from_numpy(centers), c)
    assert float(d.min(1).values.max()) < 0.5
    lab, _ = assign(torch.from_numpy(x), c)
    assert cluster_purity_pnmi(lab.numpy(), y)["purity"] == pytest.approx(1.0)
    assert 1 <= n_iter < 100


def test_chunked_assignment_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3001, 13, generator=g)
    c = torch.randn(37, 13, generator=g)
    full = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # N x K x D: fine at this size
    want_lab = full.argmin(1)
    for chunk in (1, 100, 1000, 5000):
        lab, dist = assign(x, c, chunk=chunk)
        assert torch.equal(lab, want_lab)
        torch.testing.assert_close(dist, full.min(1).values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [10, 75])  # one centroid a group; groups of 3 with the last one padded
def test_bounded_lloyd_matches_plain_lloyd(k):
    # The group bounds only skip work: the iterates must be those of textbook Lloyd.
    x, _, _ = blobs(n=4000, k=10, spread=2.0, seed=7)  # overlapping blobs: many points move
    xt = torch.from_numpy(x)
    init = xt[torch.randperm(len(xt), generator=torch.Generator().manual_seed(0))[:k]].clone()
    c = init.clone()
    for _ in range(6):
        lab = torch.cdist(xt.double(), c.double()).argmin(1)
        assert torch.bincount(lab, minlength=k).min() > 0
        c = torch.stack([xt[lab == j].double().mean(0) for j in range(k)]).float()
    got, inert, n_iter = fit_kmeans(xt, k, init=init, max_iter=6, tol=0.0, device="cpu", verbose=False)
    assert n_iter == 6
    torch.testing.assert_close(got, c, rtol=1e-4, atol=1e-4)
    assert math.isclose(inert, inertia(xt, got), rel_tol=1e-5)


def test_warm_start_path_reaches_sklearn_quality():
    from sklearn.cluster import KMeans

    x, _, _ = blobs(n=6000, k=20, spread=4.0, seed=8)
    # small init/warm sizes so the subsample stages run at this size
    c, inert, _ = fit_kmeans(torch.from_numpy(x), 20, init_size=1500, warm_size=2000, device="cpu", verbose=False)
    best = KMeans(20, n_init=10, random_state=0).fit(x).inertia_
    assert inert <= best * 1.01
    assert math.isclose(inert, inertia(torch.from_numpy(x), c), rel_tol=1e-5)


def test_deterministic_for_seed_and_seed_matters():
    x, _, _ = blobs(n=3000, k=12, spread=3.0, seed=2)
    xt = torch.from_numpy(x)
    a = fit_kmeans(xt, 12, seed=5, device="cpu", verbose=False)
    b = fit_kmeans(xt, 12, seed=5, device="cpu", verbose=False)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    g1 = kmeans_plus_plus_init(xt, 12, torch.Generator().manual_seed(1))
    g2 = kmeans_plus_plus_init(xt, 12, torch.Generator().manual_seed(2))
    assert not torch.equal(g1, g2)


def test_kmeans_plus_plus_picks_distinct_data_points():
    x, _, _ = blobs(n=2000, k=8, seed=3)
    xt = torch.from_numpy(x)
    c = kmeans_plus_plus_init(xt, 8, torch.Generator().manual_seed(0))
    # each initial center is a data point, and with well-separated blobs one lands in each blob
    assert all(bool((xt == row).all(1).any()) for row in c)
    lab, _ = assign(c, torch.from_numpy(blobs(n=2000, k=8, seed=3)[2]))
    assert len(set(lab.tolist())) == 8


def test_empty_clusters_are_reseeded():
    # Two tight groups far apart and an init that puts 3 centroids where no point is nearest.
    x = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 10.0)]) + 0.01 * torch.randn(100, 2)
    init = torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    c, inert, _ = fit_kmeans(x, 4, init=init, seed=0, device="cpu", verbose=False)
    lab, _ = assign(x, c)
    assert len(set(lab.tolist())) == 4  # every cluster ends up used
    assert inert < 50 * 2 * 0.01**2 * 4 * 2  # both groups covered: no point far from its centroid


def test_minibatch_mode_close_to_full():
    x, _, _ = blobs(n=6000, k=8, seed=4)
    xt = torch.from_numpy(x)
    _, full, _ = fit_kmeans(xt, 8, seed=0, device="cpu", verbose=False)
    _, mb, _ = fit_kmeans(xt, 8, seed=0, device="cpu", batch_size=500, max_iter=20, verbose=False)
    assert mb <= full * 1.05


def test_bad_k_is_user_error():
    with pytest.raises(SslseqError, match="k=10"):
        fit_kmeans(torch.randn(5, 3), 10, device="cpu", verbose=False)


def test_fit_and_label_feature_dir(tmp_path):
    lengths = [[30, 45, 0, 12], [50], [7, 33, 21]]
    feat_dir = make_feat_dir(tmp_path / "feats", lengths)
    model = tmp_path / "km" / "model.safetensors"
    fit_kmeans_on_features(feat_dir, model, k=5, seed=0, device="cpu")
    centroids, meta = load_kmeans(model)
    assert centroids.shape == (5, 8) and centroids.dtype == torch.float32
    assert meta["k"] == 5 and meta["dim"] == 8 and meta["frame_rate"] == 50.0
    assert meta["n_frames"] == sum(map(sum, lengths)) and meta["feat_type"] == "mfcc"
    store = FeatureStore(feat_dir)
    frames = torch.from_numpy(np.concatenate([f for _, f in store]))
    assert math.isclose(meta["inertia"], inertia(frames, centroids), rel_tol=1e-5)

    out = tmp_path / "labels" / "train.km"
    label_features(model, feat_dir, out, device="cpu")
    lines = out.read_text().split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(store)  # one line per utterance, empty utt -> empty line
    utts, labels, lmeta = read_labels(out)
    assert utts == store.utts
    assert [len(a) for a in labels] == [n for ls in lengths for n in ls]
    want, _ = assign(frames, centroids)
    assert np.array_equal(np.concatenate(labels), want.numpy())
    assert (out.parent / "dict.km.txt").read_text() == "".join(f"{i} 1\n" for i in range(5))
    written = yaml.safe_load((out.parent / "labels.yaml").read_text())
    assert {k: v for k, v in written.items() if k != "files"} == {"label_rate": 50.0, "k": 5, "dim": 8}
    assert written["files"] == {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                                for p in (out, out.with_suffix(".utts"))}  # checked by read_labels
    assert lmeta["label_rate"] == 50.0
    check_labels_match(labels, store.utts, store.lengths, out, label_utts=utts)

    # a second set with the same model can share the dir; a different k cannot
    label_features(model, feat_dir, out.parent / "valid.km", device="cpu")
    files = yaml.safe_load((out.parent / "labels.yaml").read_text())["files"]
    assert sorted(files) == ["train.km", "train.utts", "valid.km", "valid.utts"]  # each set's records kept
    model3 = tmp_path / "km" / "k3.safetensors"
    fit_kmeans_on_features(feat_dir, model3, k=3, seed=0, device="cpu")
    with pytest.raises(SslseqError, match="k=3"):
        label_features(model3, feat_dir, out.parent / "other.km", device="cpu")


def test_label_dim_mismatch_names_both(tmp_path):
    feat_dir = make_feat_dir(tmp_path / "feats", [[20, 20]], dim=8)
    other = make_feat_dir(tmp_path / "feats13", [[20, 20]], dim=13)
    model = tmp_path / "km.safetensors"
    fit_kmeans_on_features(feat_dir, model, k=3, device="cpu")
    with pytest.raises(SslseqError, match=r"dim 13.*feats13.*dim 8.*km\.safetensors"):
        label_features(model, other, tmp_path / "l" / "x.km", device="cpu")
    assert not (tmp_path / "l" / "x.km").exists()


def test_sampling_caps_frames_and_fraction(tmp_path):
    lengths = [[100] * 10, [50] * 20, [80] * 5]
    feat_dir = make_feat_dir(tmp_path / "feats", lengths, dim=4)
    total = sum(map(sum, lengths))
    all_frames = np.concatenate([f for _, f in FeatureStore(feat_dir)])
    x, meta = sample_frames(feat_dir, max_frames=10**9)
    assert np.array_equal(x, all_frames)  # no cap: everything, in order
    for cap in (1, 333, total - 1):
        x, _ = sample_frames(feat_dir, max_frames=cap, seed=3)
        assert x.shape == (cap, 4)
        # every sampled frame is a distinct real frame
        rows = {r.tobytes() for r in all_frames}
        assert all(r.tobytes() in rows for r in x) and len({r.tobytes() for r in x}) == cap
    a, _ = sample_frames(feat_dir, sample_frac=0.2, max_frames=10**9, seed=1)
    b, _ = sample_frames(feat_dir, sample_frac=0.2, max_frames=10**9, seed=1)
    c, _ = sample_frames(feat_dir, sample_frac=0.2, max_frames=10**9, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 < len(a) < total // 2
    x, _ = sample_frames(feat_dir, sample_frac=0.5, max_frames=200, seed=0)
    assert len(x) == 200
    with pytest.raises(SslseqError, match="sample-frac"):
        sample_frames(feat_dir, sample_frac=0.0)


def test_check_labels_match_errors():
    labels = [np.zeros(10, np.int64), np.zeros(20, np.int64)]
    check_labels_match(labels, ["a", "b"], [10, 22], "x.km")  # within the +-2 tolerance
    with pytest.raises(SslseqError, match=r"x\.km:2: utterance b has 20 labels but 23"):
        check_labels_match(labels, ["a", "b"], [10, 23], "x.km")
    with pytest.raises(SslseqError, match="2 label lines but 3 utterances"):
        check_labels_match(labels, ["a", "b", "c"], [10, 20, 5], "x.km")
    with pytest.raises(SslseqError, match="line 2 is labelled for utterance 'c'"):
        check_labels_match(labels, ["a", "b"], [10, 20], "x.km", label_utts=["a", "c"])


def test_read_labels_rejects_garbage(tmp_path):
    p = tmp_path / "t.km"
    p.write_text("1 2 3\n4 x 5\n")
    with pytest.raises(SslseqError, match=r"t\.km:2"):
        read_labels(p)
    p.write_text("1 2\n\n3\n")
    utts, labels, meta = read_labels(p)
    assert utts is None and meta == {} and [a.tolist() for a in labels] == [[1, 2], [], [3]]


def test_purity_pnmi_known_cases():
    y = np.array([0, 0, 1, 1, 2, 2])
    # a relabelling of the phones: perfect on every measure
    r = cluster_purity_pnmi(np.array([5, 5, 3, 3, 9, 9]), y)
    assert r["purity"] == pytest.approx(1.0) and r["cluster_purity"] == pytest.approx(1.0)
    assert r["pnmi"] == pytest.approx(1.0)
    # one cluster for everything: purity = majority phone share, no information
    r = cluster_purity_pnmi(np.zeros(6, int), y)
    assert r["purity"] == pytest.approx(1 / 3) and r["cluster_purity"] == pytest.approx(1.0)
    assert r["pnmi"] == pytest.approx(0.0, abs=1e-12)
    # one cluster per frame: pure clusters, each phone split in two; PNMI still 1 (z determines y)
    r = cluster_purity_pnmi(np.arange(6), y)
    assert r["purity"] == pytest.approx(1.0) and r["cluster_purity"] == pytest.approx(0.5)
    assert r["pnmi"] == pytest.approx(1.0)
    # hand-worked: y = [0,0,0,1], z = [0,0,1,1] -> p(y,z) = [[1/2,1/4],[0,1/4]]
    r = cluster_purity_pnmi([np.array([0, 0]), np.array([1, 1])], [np.array([0, 0]), np.array([0, 1])])
    assert r["purity"] == pytest.approx(0.5 + 0.25)
    assert r["cluster_purity"] == pytest.approx(0.5 + 0.25)
    hy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mi = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert r["pnmi"] == pytest.approx(mi / hy)
    with pytest.raises(SslseqError, match="3 cluster labels but 2"):
        cluster_purity_pnmi([0, 1, 2], [0, 1])


def test_sharded_labels_equal_unsharded(tmp_path):
    # 3 feature shards; jobs = the feature shards (3), re-splits (1, 2, 5) and more jobs than utterances (12)
    lengths = [[30, 45, 0, 12], [50], [7, 33, 21, 9, 14]]
    feat_dir = make_feat_dir(tmp_path / "feats", lengths)
    model = tmp_path / "km.safetensors"
    fit_kmeans_on_features(feat_dir, model, k=5, seed=0, device="cpu")
    ref = tmp_path / "ref" / "train.km"
    label_features(model, feat_dir, ref, device="cpu")  # one job, no --nj: as before
    for nj in (1, 2, 3, 5, 12):
        out = tmp_path / f"nj{nj}" / "train.km"
        parts = out.parent / "train.km.parts"
        for rank in reversed(range(nj)):  # any order
            label_features(model, feat_dir, out, device="cpu", nj=nj, rank=rank)
        assert sorted(p.name for p in parts.iterdir()) == sorted(f"{r}_{nj}.km" for r in range(nj))
        assert not out.exists()  # a part job writes only its part
        label_features(model, feat_dir, out, device="cpu", nj=nj)
        for name in ("train.km", "train.utts", "dict.km.txt", "labels.yaml"):
            assert (out.parent / name).read_bytes() == (ref.parent / name).read_bytes(), (nj, name)
        assert not parts.exists()  # joined parts are removed
    # the feature shards are the blocks when --nj equals their count: part r holds shard r's utterances
    out = tmp_path / "blocks" / "train.km"
    label_features(model, feat_dir, out, device="cpu", nj=3, rank=1)
    assert (out.parent / "train.km.parts" / "1_3.km").read_text().count("\n") == 1 + len(lengths[1])


def test_label_parts_are_reused_and_stale_parts_redone(tmp_path):
    feat_dir = make_feat_dir(tmp_path / "feats", [[40, 25], [60, 10, 5]])
    model = tmp_path / "km.safetensors"
    fit_kmeans_on_features(feat_dir, model, k=4, seed=0, device="cpu")
    ref = tmp_path / "ref" / "dev.km"
    label_features(model, feat_dir, ref, device="cpu")
    out = tmp_path / "lab" / "dev.km"
    part0, part1 = (out.parent / "dev.km.parts" / f"{r}_2.km" for r in (0, 1))
    label_features(model, feat_dir, out, device="cpu", nj=2, rank=0)
    first = part0.stat().st_mtime_ns
    time.sleep(0.01)
    label_features(model, feat_dir, out, device="cpu", nj=2, rank=0)  # rerun: done, skipped
    assert part0.stat().st_mtime_ns == first
    # a part of another model (same k) is not joined: the join labels it again, as it does a missing one
    other = tmp_path / "km_other.safetensors"
    fit_kmeans_on_features(feat_dir, other, k=4, seed=7, device="cpu")
    label_features(other, feat_dir, out, device="cpu", nj=2, rank=0)
    assert part0.stat().st_mtime_ns != first
    assert not part1.exists()
    label_features(model, feat_dir, out, device="cpu", nj=2)  # part 0 stale, part 1 missing
    assert out.read_bytes() == ref.read_bytes()
    assert not (out.parent / "dev.km.parts").exists()  # the join removes the parts and their dir
    with pytest.raises(SslseqError, match=r"--rank 2 is outside 0\.\.1"):
        label_features(model, feat_dir, out, device="cpu", nj=2, rank=2)
    with pytest.raises(SslseqError, match="--nj 0"):
        label_features(model, feat_dir, out, device="cpu", nj=0)
