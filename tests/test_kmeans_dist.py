"""k-means over several processes (torch.distributed, gloo on the CPU over 127.0.0.1):
per-process blocks of the sample, all-reduced cluster statistics, and the same model as one process."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import torch

from sslseq.cluster.jobs import fit_kmeans_on_features
from sslseq.cluster.kmeans import assign, fit_kmeans
from sslseq.cluster.model_file import load_kmeans
from sslseq.cluster.sampling import sample_frames
from sslseq.utils import SslseqError
from multiproc import TIMEOUT, gloo_group, spawn, torchrun
from test_kmeans import blobs, make_feat_dir

ENV = {**os.environ, "SSLSEQ_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def test_sample_blocks_partition_the_one_process_sample(tmp_path):
    lengths = [[100, 0, 37], [50] * 7, [80, 3], []]
    feat_dir = make_feat_dir(tmp_path / "feats", lengths, dim=4)
    total = sum(map(sum, lengths))
    for frac, cap in ((1.0, 10**9), (1.0, 333), (0.5, 10**9), (0.6, 101), (1.0, 2)):
        one, meta = sample_frames(feat_dir, sample_frac=frac, max_frames=cap, seed=3)
        assert meta["sampled_frames"] == len(one) and len(one) == min(cap, len(one), total)
        for world in (2, 3, 7):
            parts = [sample_frames(feat_dir, sample_frac=frac, max_frames=cap, seed=3, rank=r, world_size=world)
                     for r in range(world)]
            assert all(m["sampled_frames"] == len(one) for _, m in parts)
            sizes = [len(x) for x, _ in parts]
            assert max(sizes) - min(sizes) <= 1  # balanced blocks
            assert np.array_equal(np.concatenate([x for x, _ in parts]), one), (frac, cap, world)


# ---------------------------------------------------------------- the fit in 2 processes (spawned)


def _splits(n: int) -> dict[str, tuple[int, int]]:
    return {"uneven": (n // 6, n), "empty_rank0": (0, n)}  # rank 0 rows [0, a), rank 1 rows [a, b)


def _cases():
    """(name, points, k, fit_kmeans keyword arguments); every case runs under every split."""
    x, _, _ = blobs(n=6000, k=20, spread=4.0, seed=8)
    # init/warm sizes below n so the gathered k-means++ subsample and the warm-start stage run
    yield "stages", x, 20, {"init_size": 1500, "warm_size": 2000, "seed": 3}
    g = torch.Generator().manual_seed(0)
    two = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 10.0)]) + 0.01 * torch.randn(100, 2, generator=g)
    # centroids where no point is nearest: the empty clusters are re-seeded from far points of both processes
    init = torch.tensor([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    yield "reseed", two.numpy(), 4, {"init": init}


def _worker(rank: int, store: str, out_dir: str) -> None:
    with gloo_group(rank, 2, store):
        for name, x, k, kw in _cases():
            for split, (a, b) in _splits(len(x)).items():
                block = x[:a] if rank == 0 else x[a:b]
                c, inert, n_iter = fit_kmeans(torch.from_numpy(block), k, device="cpu", verbose=False,
                                              distributed=True, **kw)
                torch.save({"c": c, "inertia": inert, "n_iter": n_iter}, Path(out_dir) / f"{name}_{split}_{rank}.pt")
        try:  # mini-batch k-means is one-process only: every process refuses alike (no hang)
            fit_kmeans(torch.randn(50, 2), 2, batch_size=10, device="cpu", verbose=False, distributed=True)
        except SslseqError as e:
            (Path(out_dir) / f"minibatch_{rank}.txt").write_text(str(e))


def test_two_processes_fit_equals_one(tmp_path):
    spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)))
    for name, x, k, kw in _cases():
        want, want_inertia, want_iter = fit_kmeans(torch.from_numpy(x), k, device="cpu", verbose=False, **kw)
        for split in _splits(len(x)):
            r0, r1 = (torch.load(tmp_path / f"{name}_{split}_{r}.pt", weights_only=True) for r in (0, 1))
            # every process holds the very same model
            assert torch.equal(r0["c"], r1["c"]) and r0["inertia"] == r1["inertia"] and r0["n_iter"] == r1["n_iter"]
            # ... which is the one-process model up to float summation order
            torch.testing.assert_close(r0["c"], want, rtol=1e-4, atol=1e-4, msg=f"{name} {split}")
            assert r0["n_iter"] == want_iter, (name, split)
            assert math.isclose(r0["inertia"], want_inertia, rel_tol=1e-4), (name, split)
        if name == "reseed":  # it really re-seeded: every cluster ends up used
            assert len(set(assign(torch.from_numpy(x), r0["c"])[0].tolist())) == k
    for rank in (0, 1):
        assert "one process" in (tmp_path / f"minibatch_{rank}.txt").read_text()


# ---------------------------------------------------------------- the CLI under torchrun


def test_cli_under_torchrun_equals_one_process(tmp_path):
    lengths = [[300, 450, 0, 120], [500, 80], [70, 330, 210, 90], [400]]
    feat_dir = make_feat_dir(tmp_path / "feats", lengths)
    opts = ["--k", "6", "--seed", "1", "--device", "cpu", "--sample-frac", "0.8", "--max-frames", "1700"]
    model_dir = tmp_path / "km2"
    cmd = [*torchrun(2), "-m", "sslseq.cli", "kmeans", "fit", *opts,
           str(feat_dir), str(model_dir / "model.safetensors")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=TIMEOUT)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-5000:]}"
    assert "(2 processes)" in r.stderr  # it really ran distributed
    # written once (rank 0), completely (atomic rename: no temporary file left behind)
    assert r.stderr.count("wrote ") == 1, r.stderr
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.safetensors"]
    two, meta2 = load_kmeans(model_dir / "model.safetensors")

    fit_kmeans_on_features(feat_dir, tmp_path / "km1.safetensors", k=6, seed=1, device="cpu",
                           sample_frac=0.8, max_frames=1700)
    one, meta1 = load_kmeans(tmp_path / "km1.safetensors")
    torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-4)
    assert meta2["n_frames"] == meta1["n_frames"] == 1700
    assert meta2["n_iter"] == meta1["n_iter"]
    assert math.isclose(meta2["inertia"], meta1["inertia"], rel_tol=1e-4)
    assert {k: v for k, v in meta2.items() if k not in ("inertia", "feat_dir")} == \
        {k: v for k, v in meta1.items() if k not in ("inertia", "feat_dir")}
