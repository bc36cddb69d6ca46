"""On a CUDA GPU: the Triton kernels as compiled for the GPU against the reference implementation in fp32
and bf16 with the interpreter tests' cases and tolerances (``kernel_cases.py``), also at
wav2vec 2.0 Base shapes; fbank / MFCC and k-means on CUDA against the CPU; a few wav2vec 2.0
and w2v-BERT pretraining steps on the Triton implementation against the reference one (fp32, and bf16
autocast with the bf16 tolerance).

Every test here is marked ``cuda`` and runs on $SSLSEQ_TEST_DEVICE (default cuda): without a
CUDA GPU they are skipped, saying so (conftest.py, which also turns the Triton interpreter on
for the whole process where no CUDA GPU is visible; with TRITON_INTERPRET=1 set by hand on a GPU
machine the kernel tests here skip). ``sslseq bench gpu`` (tools/gpu_check.sh) runs it on a GPU machine; its dry
run runs a few of these tests on the CPU (SSLSEQ_TEST_DEVICE=cpu, TRITON_INTERPRET=1), where the
"CUDA against CPU" comparisons compare the CPU with itself: they only keep the code alive.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from kernel_cases import LOGGED, check_contrastive, close, contrastive_case, pretrain_losses, quantize_case, run_contrastive, run_quantize
from sslseq import kernels

DEVICE = torch.device(os.environ.get("SSLSEQ_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.cuda
DTYPES = [torch.float32, torch.bfloat16]
SR = 16000


@pytest.fixture
def triton_impl() -> str:
    """"triton", where that implementation runs as meant here: compiled on CUDA, interpreted on the CPU."""
    if not kernels.triton_available():
        pytest.skip(f"triton is not importable ({kernels._triton_import_error()})")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if DEVICE.type == "cuda" and interpreting:
        pytest.skip("TRITON_INTERPRET=1 in this process: unset it to test the compiled kernels")
    if DEVICE.type != "cuda" and not interpreting:
        pytest.skip("the triton implementation on the CPU needs TRITON_INTERPRET=1")
    return "triton"


@pytest.fixture
def gpu_only():
    if DEVICE.type != "cuda":
        pytest.skip("Base shapes take about a minute each in the Triton interpreter: on a GPU only")


@pytest.fixture
def exact_fp32():
    """fp32 as on the CPU: no TF32 in matmuls or convolutions, deterministic cuDNN algorithms."""
    if DEVICE.type != "cuda":
        yield
        return
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = flags


# ------------------------------------------------------------------ rng


def test_triton_rng_matches_torch(triton_impl):
    from triton_noise import keys, noise_kernel

    from sslseq.kernels import rng

    for seed in (0, 5, 2**40 + 17):  # keys on both sides of 2**31
        out = torch.empty(64, device=DEVICE)
        k1, k2 = keys(seed)
        noise_kernel[(1,)](out, 64, 4_000_000_000, k1, k2, BLOCK=64)
        ref = rng.gumbel_noise(torch.arange(64) + 4_000_000_000, seed)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ Gumbel quantizer


def _check_quantize(out, ref, case, dtype, N, G, V, d, hard):
    assert out[1].dtype == torch.int64 and out[1].shape == (N, G) and torch.equal(out[1], ref[1])
    assert out[0].shape == (N, G * d) and out[0].dtype == dtype and out[2].shape == (G, V)
    close(out[0], ref[0], dtype)
    close(out[2], ref[2], dtype)
    close(out[3], ref[3], dtype, scale=10)  # logit gradients sum d products
    close(out[4], ref[4], dtype, scale=10)
    if hard:  # the codevectors are the chosen rows exactly
        rows = ref[1] + torch.arange(G, device=ref[1].device) * V
        assert torch.equal(out[0].view(N, G, d), case[1][rows])
    assert out[3].abs().sum() > 0 and out[4].abs().sum() > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("hard", [True, False])
def test_gumbel_triton_matches_reference(triton_impl, dtype, hard):
    # N=37: not a multiple of the row block; d=70 > the column block; V=20: padded to 32.
    case = quantize_case(37, 2, 20, 70, dtype, device=DEVICE)
    _check_quantize(run_quantize(triton_impl, *case, hard), run_quantize("reference", *case, hard), case,
                    dtype, 37, 2, 20, 70, hard)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_gumbel_triton_matches_reference_base_shape(gpu_only, triton_impl, dtype):
    """wav2vec 2.0 Base: N=2150 frames, G=2 x V=320 (padded to 512), d=128, hard."""
    N, G, V, d = 2150, 2, 320, 128
    case = quantize_case(N, G, V, d, dtype, seed=3, device=DEVICE)
    out = run_quantize(triton_impl, *case, True, G=G, tau=2.0)
    ref = run_quantize("reference", *case, True, G=G, tau=2.0)
    # The codebook gradient sums about N·G/V = 13 rows per code: scale the absolute tolerance.
    _check_quantize(out, ref, case, dtype, N, G, V, d, True)


def test_gumbel_triton_codebook_grad_deterministic_and_atomic(triton_impl):
    # Few codes, many rows: heavy collisions in the codebook scatter.
    case = quantize_case(50, 2, 3, 20, torch.float32, seed=1, device=DEVICE)
    a = run_quantize(triton_impl, *case, True, deterministic=True)
    b = run_quantize(triton_impl, *case, True, deterministic=True)
    c = run_quantize(triton_impl, *case, True, deterministic=False)
    ref = run_quantize("reference", *case, True)
    assert torch.equal(a[4], b[4]) and torch.equal(a[3], b[3])
    close(a[4], ref[4], torch.float32)
    close(c[4], ref[4], torch.float32)


# ------------------------------------------------------------------ contrastive loss


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_codes", [True, False])
def test_contrastive_triton_matches_reference(triton_impl, dtype, use_codes):
    context, targets, neg, codes = contrastive_case(dtype, device=DEVICE)
    codes = codes if use_codes else None
    assert (neg[0] == -1).all()  # the edge cases are present
    check_contrastive(run_contrastive(triton_impl, context, targets, neg, codes),
                       run_contrastive("reference", context, targets, neg, codes), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_contrastive_triton_matches_reference_base_shape(gpu_only, triton_impl, dtype):
    """wav2vec 2.0 Base: 5 utterances of 430 masked frames (N=2150), K=100 negatives, D=256."""
    from sslseq.objectives.contrastive import sample_negatives

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(5, 662, dtype=torch.bool)
    for b in range(5):
        mask[b, torch.randperm(662, generator=g)[:430]] = True
    neg = sample_negatives(100, mask, generator=g)
    n = neg.size(0)
    codes = torch.randint(0, 320, (n, 2), generator=g)
    context, targets = (torch.randn(n, 256, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    neg, codes = neg.to(DEVICE), codes.to(DEVICE)
    out = run_contrastive(triton_impl, context, targets, neg, codes)
    ref = run_contrastive("reference", context, targets, neg, codes)
    # The loss sums 2150 rows: its absolute tolerance scales with them.
    torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-4 * n)
    assert abs(int(out[1]) - int(ref[1])) <= (0 if dtype == torch.float32 else 2)
    close(out[2], ref[2], dtype)
    close(out[3], ref[3], dtype, scale=10)  # a target row is the negative of about K rows


def test_contrastive_triton_edge_rows(triton_impl):
    context, targets, neg, codes = contrastive_case(torch.float32, device=DEVICE)
    # Rows 0 (no negative) and 1-3 (all negatives equal the positive): only the positive is left,
    # so their loss is 0, they count as correct, and the only gradient is 0.
    for rows, n_correct in (([0], 1), ([1, 2, 3], 3)):
        sub = neg[rows]
        out = run_contrastive(triton_impl, context[rows], targets[rows], torch.where(sub >= 0, sub - rows[0], sub),
                              codes[rows])
        assert float(out[0]) == 0.0 and int(out[1]) == n_correct
        assert float(out[2].abs().max()) == 0.0 and float(out[3].abs().max()) == 0.0
    empty = run_contrastive(triton_impl, context[:5], targets[:5], neg[:5, :0], codes[:5])
    assert int(empty[1]) == 0 and float(empty[0]) == 0.0  # no negatives at all: all tied


def test_contrastive_triton_deterministic_option(triton_impl):
    context, targets, neg, codes = contrastive_case(torch.float32, K=40, D=20, seed=1, distinct_codes=50, device=DEVICE)
    a = run_contrastive(triton_impl, context, targets, neg, codes, deterministic=True)
    b = run_contrastive(triton_impl, context, targets, neg, codes, deterministic=True)
    c = run_contrastive(triton_impl, context, targets, neg, codes, deterministic=False)
    ref = run_contrastive("reference", context, targets, neg, codes)
    assert torch.equal(a[3], b[3]) and torch.equal(a[2], b[2])
    close(a[3], ref[3], torch.float32)
    close(c[3], ref[3], torch.float32)


# ------------------------------------------------------------------ features


def _speechlike(n: int, seed: int) -> np.ndarray:
    """Harmonics with a moving f0, a chirp, noise, digital silence and a near-silent stretch."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = 120 + 80 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(0.2 / k * np.sin(k * phase) for k in range(1, 6))
    x = x + 0.1 * np.sin(2 * np.pi * (300 * t + 3000 * t**2 / max(n / SR, 1e-3))) + 0.02 * rng.standard_normal(n)
    x[n // 5 : n // 5 + 900] = 0.0
    x[n // 2 : n // 2 + 500] *= 1e-4
    return np.clip(x, -1, 1).astype(np.float32)


def test_features_cuda_match_cpu():
    from sslseq.features import kaldi as K

    xs = [_speechlike(n, seed=20 + i) for i, n in enumerate([SR * 2 + 37, 400, 5000, SR + 160 * 7 + 3])]
    w = torch.zeros(len(xs), max(len(x) for x in xs))
    for i, x in enumerate(xs):
        w[i, : len(x)] = torch.from_numpy(x)
    lens = torch.tensor([len(x) for x in xs])
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # must be overridden inside fbank/mfcc
    try:
        for fn in (K.fbank, K.mfcc):
            cpu, n_cpu = fn(w, lens)
            dev, n_dev = fn(w.to(DEVICE), lens.to(DEVICE))
            assert dev.device.type == DEVICE.type
            assert n_dev.tolist() == n_cpu.tolist()
            assert (dev.cpu() - cpu).abs().max() < 5e-3
        assert torch.backends.cuda.matmul.allow_tf32  # restored afterwards
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


# ------------------------------------------------------------------ k-means


def _blobs(n=6000, dim=8, k=6, seed=0, spread=10.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, spread, (k, dim)).astype(np.float32)
    x = centers[rng.integers(0, k, n)] + rng.normal(0, 1.0, (n, dim)).astype(np.float32)
    return torch.from_numpy(x.astype(np.float32))


def test_kmeans_lloyd_and_assign_cuda_match_cpu():
    from sslseq.cluster.kmeans import assign, fit_kmeans

    x = _blobs()
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:6]]
    runs = {dev: fit_kmeans(x, 6, init=init, max_iter=20, tol=0.0, device=dev, verbose=False)
            for dev in ("cpu", str(DEVICE))}
    (c_cpu, in_cpu, it_cpu), (c_dev, in_dev, it_dev) = runs["cpu"], runs[str(DEVICE)]
    assert c_dev.device.type == "cpu" and abs(it_dev - it_cpu) <= 1  # both stop once no point moves
    torch.testing.assert_close(c_dev, c_cpu, rtol=1e-4, atol=1e-4)
    assert math.isclose(in_dev, in_cpu, rel_tol=1e-4)
    # x on the CPU, centroids on the device: chunks are moved; the same labels and distances
    lab_cpu, d_cpu = assign(x, c_cpu)
    lab_dev, d_dev = assign(x, c_cpu.to(DEVICE))
    assert lab_dev.device.type == DEVICE.type and torch.equal(lab_dev.cpu(), lab_cpu)
    torch.testing.assert_close(d_dev.cpu(), d_cpu, rtol=1e-4, atol=1e-3)


def test_kmeans_seeded_fit_cuda_matches_cpu():
    """k-means++ from a seed and Lloyd to convergence on the device: the same clusters as on the CPU."""
    from sslseq.cluster.kmeans import assign, fit_kmeans

    x = _blobs(n=20000, k=12, seed=4, spread=8.0)
    c_cpu, in_cpu, _ = fit_kmeans(x, 12, seed=0, init_size=5000, warm_size=6000, device="cpu", verbose=False)
    c_dev, in_dev, _ = fit_kmeans(x, 12, seed=0, init_size=5000, warm_size=6000, device=str(DEVICE), verbose=False)
    assert math.isclose(in_dev, in_cpu, rel_tol=1e-3)
    a, b = assign(x, c_cpu)[0], assign(x, c_dev)[0]
    # the same partition up to the clusters' order: every CPU cluster maps onto one device cluster
    pairs = torch.unique(a * 12 + b)
    assert len(pairs) == 12 and len(torch.unique(pairs // 12)) == 12


# ------------------------------------------------------------------ pretraining steps


@pytest.mark.parametrize("family", ["wav2vec2", "w2vbert"])
def test_pretraining_steps_triton_match_reference(monkeypatch, exact_fp32, triton_impl, family):
    ref = pretrain_losses(monkeypatch, "reference", family, device=DEVICE)
    out = pretrain_losses(monkeypatch, triton_impl, family, device=DEVICE)
    assert ref[0] != ref[-1]  # the model did learn something in between
    assert all(math.isfinite(v) for row in ref for v in row)
    for r, t in zip(ref, out):
        assert t == pytest.approx(r, rel=1e-4, abs=1e-5), (LOGGED, r, t)


@pytest.mark.parametrize("family", ["wav2vec2", "w2vbert"])
def test_pretraining_steps_bf16_autocast_triton_match_reference(monkeypatch, triton_impl, family):
    """Under bf16 autocast (the GPU recipe's precision) the loss and the code perplexity of the
    two implementations agree within the bf16 tolerance (2e-2) over the steps (accuracy: not compared, a
    bf16 rounding may flip an argmax)."""
    ref = pretrain_losses(monkeypatch, "reference", family, device=DEVICE, autocast_dtype=torch.bfloat16)
    out = pretrain_losses(monkeypatch, triton_impl, family, device=DEVICE, autocast_dtype=torch.bfloat16)
    assert all(math.isfinite(v) for row in ref + out for v in row)
    for r, t in zip(ref, out):
        assert t[:3] == pytest.approx(r[:3], rel=2e-2, abs=2e-2), (LOGGED, r, t)
