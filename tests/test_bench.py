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


def test_bench_train_bf16_needs_cuda():
    from sslseq.cli import main

    assert main(["bench", "train", "--model", "wav2vec2", "--dtype", "bf16", "--device", "cpu"]) == 1
