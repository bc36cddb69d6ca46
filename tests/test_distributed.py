"""Data-parallel training through torchrun (gloo on CPU, loopback): one update with 2 processes
equals one update of 1 process accumulating the same 2 micro-batches (``optim.update_freq=2``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from multiproc import TIMEOUT, free_port, gloo_group, spawn, torchrun
from test_models import small_encoder
from test_train import _tone_corpus

ENV = {**os.environ, "SSLSEQ_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def _config(tmp: Path, train: Path, km: Path) -> Path:
    """HuBERT on every frame with no randomness in the step (no masking, no dropout), so the
    two runs differ only in how the batch is split over processes."""
    model = {"name": "hubert", "final_dim": 16, "pred_masked_weight": 0.0, "pred_nomask_weight": 1.0,
             "encoder": small_encoder(mask_prob=0.0)}
    cfg = {
        "task": "pretrain",
        "model": model,
        "data": {"train": str(train), "labels_train": str(km), "max_batch_seconds": 4.0, "max_sample_seconds": 2.0},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "max_steps": 3, "clip_norm": 0.0},
        "log_interval": 1,
        "save_interval": 3,
        "device": "cpu",
        "find_unused_parameters": True,  # no masking: the mask embedding gets no gradient
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(out: Path) -> list[float]:
    rec = [json.loads(line) for line in (out / "log" / "train.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rec if "loss" in r]


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=2 * TIMEOUT)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-5000:]}"


LAUNCHERS = {
    "torchrun": lambda port: torchrun(2),  # --standalone: it picks its own free port
    # accelerate's multi-process launch; with the CPU device the trainer asks for, it uses gloo
    "accelerate": lambda port: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_port", str(port)],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_equal_one_with_twice_the_accumulation(tmp_path, launcher):
    train, km = _tone_corpus(tmp_path / "train", 16, seed=0)
    cfg = _config(tmp_path, train, km)
    one, two = tmp_path / "ws1", tmp_path / "ws2"
    # Under accelerate the same config serves both: optim.sized_for_processes=2 accumulates 2
    # micro-batches on 1 process and 1 on each of 2.
    freq = (["optim.sized_for_processes=2"] * 2 if launcher == "accelerate"
            else ["optim.update_freq=2", "optim.update_freq=1"])
    _run([sys.executable, "-m", "sslseq.cli", "train", str(cfg), f"out_dir={one}", freq[0]])
    _run([*LAUNCHERS[launcher](free_port()), "-m", "sslseq.cli", "train", str(cfg), f"out_dir={two}", freq[1]])
    assert yaml.safe_load((two / "train_summary.yaml").read_text())["processes"] == 2
    l1, l2 = _losses(one), _losses(two)
    assert len(l1) == len(l2) == 3
    assert l1 == pytest.approx(l2, rel=1e-5)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)
    # the weights moved: the comparison is not between two untouched initialisations
    init = torch.load(next((one / "checkpoints").glob("step_*")) / "trainer_state.pt", weights_only=True)
    assert init["step"] == 3


def _quantizer_worker(rank: int, world: int, store: str, out: str) -> None:
    """One process's half of the frames through the quantizer; its diversity loss as the
    wav2vec 2.0 objective scales it (× its frame count), gradients summed over processes."""
    import torch.distributed as dist

    with gloo_group(rank, world, store):
        qz, x = _quantizer_case()
        part = x.chunk(world, dim=1)[rank]
        q = qz(part)
        loss = (q.num_vars - q.prob_perplexity) / q.num_vars * part.shape[1]
        loss.backward()
        grads = [p.grad.clone() for p in qz.parameters() if p.grad is not None]
        for g in grads:
            dist.all_reduce(g)
        if rank == 0:
            torch.save({"prob_ppl": q.prob_perplexity.detach(), "code_ppl": q.code_perplexity, "grads": grads}, out)


def _quantizer_case():
    from sslseq.objectives.quantizer import GumbelVectorQuantizer

    torch.manual_seed(0)
    qz = GumbelVectorQuantizer(12, num_vars=8, groups=2, vq_dim=8).eval()  # eval: no Gumbel noise
    x = torch.randn(1, 40, 12)
    return qz, x


def test_quantizer_diversity_statistics_are_summed_over_processes(tmp_path):
    qz, x = _quantizer_case()
    q = qz(x)
    ((q.num_vars - q.prob_perplexity) / q.num_vars * x.shape[1]).backward()
    ref = [p.grad for p in qz.parameters() if p.grad is not None]
    out = tmp_path / "rank0.pt"
    spawn(_quantizer_worker, args=(2, str(tmp_path / "store"), str(out)))
    got = torch.load(out, weights_only=True)
    # the perplexities describe all 40 frames, not one process's 20
    torch.testing.assert_close(got["prob_ppl"], q.prob_perplexity.detach())
    torch.testing.assert_close(got["code_ppl"], q.code_perplexity)
    assert len(got["grads"]) == len(ref)
    for g, r in zip(got["grads"], ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
