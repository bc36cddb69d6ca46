"""``sslseq bench feats``: fbank / MFCC throughput of sslseq vs kaldi-native-fbank, same run, same audio.

Throughput is audio seconds processed per wall-clock second per core used (threads), best of
``REPEATS`` runs (the machine may be shared). Ratios are against kaldi-native-fbank (one
utterance at a time, one thread) measured in this run. Compared like for like: 80-dim fbank,
13-dim MFCC, and 39-dim MFCC + deltas (knf: OnlineMfcc + knf.compute_deltas).
"""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch

REPEATS = 3
SR = 16000


def synth_utterances(seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Deterministic speech-like utterances (2-15 s: voiced harmonics with moving f0, noise, pauses)."""
    rng = np.random.default_rng(seed)
    out, total = [], 0.0
    while total < seconds:
        dur = min(float(rng.uniform(2.0, 15.0)), max(seconds - total, 0.5))
        n = int(dur * SR)
        t = np.arange(n) / SR
        f0 = rng.uniform(90, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        voiced = sum(rng.uniform(0.02, 0.2) / k * np.sin(k * phase) for k in range(1, 12))
        env = (np.sin(2 * np.pi * rng.uniform(2, 5) * t) > -0.3).astype(np.float64)  # syllables and pauses
        x = voiced * env + 0.01 * rng.standard_normal(n)
        out.append(np.clip(x, -1, 1).astype(np.float32))
        total += dur
    return out


def _knf(kind: str):
    import kaldi_native_fbank as knf

    if kind == "fbank":
        opts = knf.FbankOptions()
        opts.mel_opts.num_bins = 80
    else:
        opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    delta_opts = knf.DeltaOptions()

    def run(utts: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for x in utts:
            comp = knf.OnlineFbank(opts) if kind == "fbank" else knf.OnlineMfcc(opts)
            comp.accept_waveform(SR, x * 32768)
            comp.input_finished()
            feats = np.array([comp.get_frame(i) for i in range(comp.num_frames_ready)], dtype=np.float32)
            out.append(knf.compute_deltas(delta_opts, feats) if kind == "mfcc39" else feats)
        return out

    return run


def _ours(kind: str, batch_size: int | None, device: str = "cpu"):
    from sslseq.features import kaldi

    def compute(w: torch.Tensor, n: torch.Tensor):
        if kind == "fbank":
            return kaldi.fbank(w, n)
        return kaldi.mfcc(w, n, deltas=kind == "mfcc39")

    def run(utts: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        if batch_size is None:
            for x in utts:
                f, _ = compute(torch.from_numpy(x)[None], torch.tensor([len(x)]))
                out.append(f[0].numpy())
            return out
        order = sorted(range(len(utts)), key=lambda i: len(utts[i]))  # as the dumper batches
        res: dict[int, np.ndarray] = {}
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            lens = torch.tensor([len(utts[i]) for i in idx])
            w = torch.zeros(len(idx), int(lens.max()))
            for j, i in enumerate(idx):
                w[j, : len(utts[i])] = torch.from_numpy(utts[i])
            f, fl = compute(w.to(device), lens.to(device))
            f = f.cpu().numpy()
            fl = fl.cpu()
            for j, i in enumerate(idx):
                res[i] = f[j, : int(fl[j])]
        return [res[i] for i in range(len(utts))]

    return run


def _time(fn: Callable[[list[np.ndarray]], list[np.ndarray]], utts: list[np.ndarray], threads: int):
    torch.set_num_threads(threads)
    fn(utts[:2])  # warm-up (caches, allocator)
    best, result = float("inf"), None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        result = fn(utts)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(args) -> None:
    seconds = float(getattr(args, "seconds", 600.0))
    batch_size = int(getattr(args, "batch_size", 16))
    all_threads = torch.get_num_threads()
    all_threads = max(all_threads, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    utts = synth_utterances(seconds)
    audio = sum(len(x) for x in utts) / SR
    print(f"audio: {len(utts)} utterances, {audio:.1f} s; batch size {batch_size}; threads available {all_threads}")
    print(f"torch {torch.__version__}; throughput = audio seconds per second per core, best of {REPEATS}\n")
    header = (
        f"{'features':<9} {'implementation':<34} {'threads':>7} {'x realtime/core':>16} {'vs knf':>8} {'max|diff|':>10}"
    )
    print(header)
    print("-" * len(header))
    try:
        for kind in ("fbank", "mfcc", "mfcc39"):
            ref_time, ref = _time(_knf(kind), utts, 1)
            ref_rate = audio / ref_time
            rows = [("kaldi-native-fbank, per utterance", 1, ref_time, ref)]
            for label, bs, th in (
                ("sslseq, per utterance", None, 1),
                (f"sslseq, batched x{batch_size}", batch_size, 1),
                (f"sslseq, batched x{batch_size}", batch_size, all_threads),
            ):
                t, out = _time(_ours(kind, bs), utts, th)
                rows.append((label, th, t, out))
            if torch.cuda.is_available():
                t, out = _time(_ours(kind, batch_size, "cuda"), utts, all_threads)
                rows.append((f"sslseq, batched x{batch_size}, CUDA (per GPU)", 1, t, out))
            for label, th, t, out in rows:
                rate = audio / t / th
                diff = max(float(np.abs(a - b).max()) for a, b in zip(out, ref) if len(a))
                name = {"fbank": "fbank80", "mfcc": "mfcc13", "mfcc39": "mfcc39"}[kind]
                print(f"{name:<9} {label:<34} {th:>7} {rate:>16.0f} {rate / ref_rate:>7.2f}x {diff:>10.1e}")
            print()
    finally:
        torch.set_num_threads(all_threads)
