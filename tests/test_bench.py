"""``sslseq bench train`` runs end to end on a tiny batch and reports both implementations
(a smoke test of the benchmark itself: the timings it prints are not judged here)."""

from __future__ import annotations

import json

import pytest


def test_bench_train_reports_sslseq_and_transformers(tmp_path, capsys):
    pytest.importorskip("transformers")
    from sslseq.cli import main

    out = tmp_path / "train.json"
    assert main(["bench", "train", "--batch", "2", "--seconds", "1", "--steps", "1", "--warmup", "0",
                 "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["impl"] for r in records] == ["transformers", "sslseq"]
    for r in records:
        assert r["step_ms"] > 0 and r["peak_mb"] > 0 and r["frames_per_s"] > 0
        assert r["device"] == "cpu" and r["shape"].startswith("tiny: 2 x 1 s")
    assert records[0]["speedup_vs_transformers"] == 1.0
    printed = capsys.readouterr().out
    assert "sslseq" in printed and "goal (>= 1.5x faster, no more memory)" in printed


def test_bench_train_fp32_vs_bf16_on_cpu(tmp_path, capsys):
    """--dtype both on the CPU: sslseq's step in fp32 and bf16 side by side, the CPU's bf16
    support stated, and a short fp32/bf16 loss agreement from the same init (bf16 is slow on
    CPUs without bf16 matrix instructions: one tiny utterance, two steps)."""
    from sslseq import hw
    from sslseq.cli import main

    out = tmp_path / "dtypes.json"
    assert main(["bench", "train", "--dtype", "both", "--agree-steps", "2", "--batch", "1", "--seconds", "0.5",
                 "--steps", "1", "--warmup", "0", "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    fp32, bf16 = report["records"]
    assert (fp32["dtype"], bf16["dtype"]) == ("fp32", "bf16") and fp32["speedup_vs_fp32"] == 1.0
    assert bf16["step_ms"] > 0 and bf16["native_bf16"] == hw.cpu_bf16().native
    ag = report["agreement"]
    assert len(ag["fp32"]) == len(ag["bf16"]) == 2 and ag["fp32"] != ag["bf16"]
    # same init, batch and random draws: bf16 differs from fp32 only by rounding
    assert 0.0 < ag["max_rel_diff"] < 0.2
    printed = capsys.readouterr().out
    assert "vs fp32" in printed and "native bf16" in printed  # the CPU line of sslseq.hw
    assert "max relative difference" in printed


def test_bench_train_hubert_cpu_config_reports_audio_seconds(tmp_path, capsys):
    """The recipe's HuBERT cpu config (fbank frontend, 25 Hz) on random labels: fp32 and bf16
    steps with their audio seconds per second; it has no transformers reference, so only
    --dtype both is accepted."""
    from sslseq.cli import main
    from sslseq.utils import SslseqError

    out = tmp_path / "hubert.json"
    assert main(["bench", "train", "--model", "hubert", "--size", "cpu", "--dtype", "both", "--agree-steps", "2",
                 "--batch", "1", "--seconds", "1", "--steps", "1", "--warmup", "0", "--device", "cpu",
                 "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    fp32, bf16 = report["records"]
    assert fp32["model"] == "hubert" and "23 frames each" in fp32["shape"]  # 1 s: 98 fbank frames, two stride-2 convs
    assert fp32["audio_s_per_s"] == pytest.approx(1000.0 / fp32["step_ms"])
    assert 0.0 < report["agreement"]["max_rel_diff"] < 0.2
    assert "audio s/s" in capsys.readouterr().out
    from sslseq.bench.train import main as bench_train

    with pytest.raises(SslseqError, match="time the others with --dtype both"):
        bench_train(_args(model="hubert", size="cpu", dtype="fp32"))


def _args(**kw):
    import argparse

    base = dict(model="wav2vec2", size=None, batch=1, seconds=1.0, device="cpu", dtype="fp32", agree_steps=0,
                steps=1, warmup=0, threads=1, seed=0, out=None)
    return argparse.Namespace(**{**base, **kw})


def test_bench_kmeans_times_the_whole_command_beside_the_fit(capsys):
    """The whole ``sslseq kmeans fit`` command (new process, feature dir, model file) and the
    in-process fit on the same data, inertia measured the same way for both, scikit-learn the reference."""
    pytest.importorskip("sklearn")
    from sslseq.cli import main

    assert main(["bench", "kmeans", "--frames", "6000", "--dim", "13", "--k", "20", "--skip", "faiss"]) == 0
    rows = {line.split("  ")[0].strip(): line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("sslseq", "sklearn"))}
    assert set(rows) == {"sslseq kmeans fit (command)", "sslseq (Lloyd, k-means++)", "sklearn MiniBatchKMeans"}
    command, fit = rows["sslseq kmeans fit (command)"], rows["sslseq (Lloyd, k-means++)"]
    # columns from the right: inertia / MBK, speedup, per frame, inertia, fit seconds
    assert float(command[-5]) >= float(fit[-5]) > 0  # a new process costs at least the fit itself
    assert abs(float(command[-4]) / float(fit[-4]) - 1) < 0.02  # the same fit: inertia within 2%
