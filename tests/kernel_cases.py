"""Inputs, runners and tolerances of the kernel tests, shared by ``test_kernels.py`` (CPU, the
Triton interpreter) and ``test_cuda.py`` (a CUDA GPU, the compiled Triton kernels), so both
check the same cases with the same tolerances.

Importing this module neither imports triton nor sets ``TRITON_INTERPRET``: each test module
decides that for its own process.
"""

from __future__ import annotations

import contextlib

import torch

from sslseq import kernels
from sslseq.objectives.contrastive import sample_negatives

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)


# ------------------------------------------------------------------ Gumbel quantizer


def quantize_case(N, G, V, d, dtype, seed=0, device="cpu"):
    """(logits (N, G·V), codebook (G·V, d), weights of the codevectors, weights of the mean softmax)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, G * V, generator=g) * 2).to(dtype)
    book = torch.randn(G * V, d, generator=g).to(dtype)
    wq = torch.randn(N, G * d, generator=g)
    wm = torch.randn(G, V, generator=g)
    return tuple(t.to(device) for t in (logits, book, wq, wm))


def run_quantize(impl, logits, book, wq, wm, hard, deterministic=None, tau=0.7, seed=11, G=2):
    """(quantized, code ids, mean softmax, logit gradient, codebook gradient) of one op call."""
    lg, bk = logits.clone().requires_grad_(True), book.clone().requires_grad_(True)
    q, ids, mean = kernels.gumbel_quantize(lg, bk, tau, hard, seed, impl, groups=G, deterministic=deterministic)
    ((q.float() * wq).sum() + (mean.float() * wm).sum()).backward()
    return q.detach(), ids, mean.detach(), lg.grad, bk.grad


# ------------------------------------------------------------------ contrastive loss


def contrastive_case(dtype, K=6, D=70, seed=0, distinct_codes=4, device="cpu"):
    """Masked frames of 4 utterances with every edge case: one masked frame (no negative), fewer
    masked frames than K, padding, and an utterance whose targets all share one code (all of its
    negatives equal the positive)."""
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 16
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[0, 5] = True  # one masked frame
    mask[1, [2, 4, 9]] = True  # 3 < K
    mask[2] = torch.rand(T, generator=g) < 0.7
    mask[3, 1:12] = True
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[3, 8:] = True  # padded frames are masked too but never used
    neg = sample_negatives(K, mask, pad, generator=g)
    utt = (mask & ~pad).nonzero()[:, 0]
    N = neg.size(0)
    codes = torch.randint(0, distinct_codes, (N, 2), generator=g)
    codes[utt == 1] = torch.tensor([1, 1])  # utterance 1: all negatives equal the positive
    table = torch.randn(2, distinct_codes, D, generator=g)
    targets = (table[0, codes[:, 0]] + table[1, codes[:, 1]]).to(dtype)  # equal codes ⇔ equal vectors
    context = torch.randn(N, D, generator=g).to(dtype)
    return tuple(t.to(device) for t in (context, targets, neg, codes))


def run_contrastive(impl, context, targets, neg, codes, deterministic=None, temperature=0.1):
    """(loss, number correct, context gradient, target gradient) of one op call."""
    c, t = context.clone().requires_grad_(True), targets.clone().requires_grad_(True)
    loss, correct = kernels.contrastive_loss(c, t, neg, codes, temperature, impl, deterministic=deterministic)
    (loss * 0.5).backward()
    return loss.detach(), correct, c.grad, t.grad


# ------------------------------------------------------------------ pretraining steps


def _family(name: str):
    """(model config, batch of step ``seed``) of the small models the model tests use."""
    if name == "wav2vec2":
        from test_wav2vec2 import batch, w2v_cfg

        return w2v_cfg(), lambda seed: batch(seed=seed)
    if name == "w2vbert":
        from test_w2vbert import small_w2vbert, wav_batch

        return small_w2vbert(), lambda seed: wav_batch(seed=seed)
    raise ValueError(name)


LOGGED = ("contrastive", "prob_perplexity", "acc")  # besides the loss, per step


def pretrain_losses(monkeypatch, impl, family="wav2vec2", steps=3, device="cpu", autocast_dtype=None):
    """Per SGD step (loss, *LOGGED) of a small model of ``family`` on kernel implementation
    ``impl``: the same init, batches and random draws for every implementation."""
    from sslseq.models import build_model
    from sslseq.models.base import log_floats

    cfg, make_batch = _family(family)
    monkeypatch.setenv(kernels.ENV_IMPL, impl)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    dev = torch.device(device)
    autocast = (torch.autocast(device_type=dev.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    losses = []
    for step in range(steps):
        model.set_num_updates(step)
        b = {k: v.to(device) for k, v in make_batch(step).items()}
        with autocast:
            out = model(b)
        opt.zero_grad()
        (out.loss / out.sample_size).backward()
        opt.step()
        logs = log_floats(out.logs)  # as the trainer reads them (tensors until then)
        losses.append((out.loss.item(), *(logs[k] for k in LOGGED)))
    return losses


def check_contrastive(out, ref, dtype):
    """A contrastive-loss implementation's (loss, count, grads...) against the reference's."""
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.int64 and out[0].shape == ()
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-4)
    assert int(out[1]) == int(ref[1])
    close(out[2], ref[2], dtype)
    close(out[3], ref[3], dtype)
    assert out[2].dtype == dtype and out[3].dtype == dtype
