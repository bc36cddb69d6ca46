"""sslseq.kernels: the Gumbel quantizer and contrastive loss ops, ``triton`` (run by the Triton
interpreter on CPU) and ``chunked`` against ``reference`` (forward outputs and gradients), edge
cases, float64 gradcheck of the torch implementations, the dispatcher, and wav2vec 2.0 steps on both."""

from __future__ import annotations

import os

import pytest
import torch

from kernel_cases import check_contrastive, close, pretrain_losses
from kernel_cases import contrastive_case as _contrastive_case
from kernel_cases import quantize_case as _quantize_case
from kernel_cases import run_contrastive as _run_contrastive
from kernel_cases import run_quantize as _run_quantize
from sslseq import kernels
from sslseq.kernels import rng
from sslseq.utils import SslseqError

torch.set_num_threads(1)

# conftest.py turns the interpreter on for the whole process where no CUDA GPU is visible.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_triton = pytest.mark.skipif(
    not kernels.triton_available() or not INTERPRETED,
    reason=f"triton is not importable here ({kernels._triton_import_error()}); pip install triton"
    if not kernels.triton_available() else
    "a CUDA GPU is visible, so Triton compiles in this process: tests/test_cuda.py runs the triton implementation there",
)
FAST_IMPLS = ["chunked", pytest.param("triton", marks=needs_triton)]


# ------------------------------------------------------------------ rng


def test_rng_uniform_and_gumbel_statistics():
    offs = torch.arange(200_000)
    u = rng.uniform(offs, 7)
    assert u.dtype == torch.float32 and 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) * 12 - 1) < 0.01
    g = rng.gumbel_noise(offs, 7)
    assert abs(float(g.mean()) - 0.5772) < 0.01 and abs(float(g.var()) - torch.pi**2 / 6) < 0.03
    assert not torch.equal(rng.hash_u32(offs[:100], 7), rng.hash_u32(offs[:100], 8))  # the seed matters
    assert torch.equal(rng.hash_u32(offs[:100], 7), rng.hash_u32(offs[:100], 7))
    # Large offsets and seeds stay 32-bit (no int64 overflow in the multiply).
    h = rng.hash_u32(torch.tensor([0, 2**32 - 1, 2**40 + 5]), 2**61 + 3)
    assert (h >= 0).all() and (h < 2**32).all()


if kernels.triton_available():  # a kernel must live at module level (its globals are resolved there)
    import triton
    import triton.language as tl

    from sslseq.kernels.gumbel_triton import _gumbel, _keys

    @triton.jit(do_not_specialize=["k1", "k2"])
    def _noise_kernel(out, n, k1, k2, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out + offs, _gumbel(offs.to(tl.int64) + 4_000_000_000, k1, k2), mask=offs < n)


@needs_triton
def test_rng_triton_matches_torch():
    for seed in (0, 5, 2**40 + 17):  # keys on both sides of 2**31
        out = torch.empty(64)
        k1, k2 = _keys(seed)
        _noise_kernel[(1,)](out, 64, k1, k2, BLOCK=64)
        ref = rng.gumbel_noise(torch.arange(64) + 4_000_000_000, seed)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


@needs_triton
def test_triton_kernels_compile_for_h100():
    """The interpreter accepts code the GPU compiler rejects or that does not fit a block:
    compile every kernel for sm_90 (no GPU needed: triton ships ptxas) and check the fit."""
    import subprocess
    import sys
    from pathlib import Path

    import triton

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    if not all((tools / t).exists() for t in ("ptxas", "cuobjdump")):
        pytest.skip(f"this triton build has no ptxas/cuobjdump in {tools}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "sslseq.kernels.compile_check", "--arch", "90"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" yes") >= 16, r.stdout


# ------------------------------------------------------------------ Gumbel quantizer


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hard", [True, False])
def test_gumbel_impls_match_reference(impl, dtype, hard):
    G = 2
    # N=37: not a multiple of the row block; d=70 > the column block; V=20: padded to 32.
    case = _quantize_case(37, G, 20, 70, dtype)
    ref = _run_quantize("reference", *case, hard)
    out = _run_quantize(impl, *case, hard)
    assert out[1].dtype == torch.int64 and out[1].shape == (37, G) and torch.equal(out[1], ref[1])
    assert out[0].shape == (37, G * 70) and out[0].dtype == dtype and out[2].shape == (G, 20)
    close(out[0], ref[0], dtype)
    close(out[2], ref[2], dtype)
    close(out[3], ref[3], dtype, scale=10)  # logit gradients sum d=70 products
    close(out[4], ref[4], dtype, scale=10)
    if hard:  # the codevectors are the chosen rows exactly
        rows = ref[1] + torch.arange(G) * 20
        assert torch.equal(out[0].view(37, G, 70), case[1][rows])
    assert out[3].abs().sum() > 0 and out[4].abs().sum() > 0


@needs_triton
def test_gumbel_triton_codebook_grad_deterministic_and_atomic():
    # Few codes, many rows: heavy collisions in the codebook scatter.
    case = _quantize_case(50, 2, 3, 20, torch.float32, seed=1)
    a = _run_quantize("triton", *case, True, deterministic=True)
    b = _run_quantize("triton", *case, True, deterministic=True)
    c = _run_quantize("triton", *case, True, deterministic=False)
    ref = _run_quantize("reference", *case, True)
    assert torch.equal(a[4], b[4]) and torch.equal(a[3], b[3])
    close(a[4], ref[4], torch.float32)
    close(c[4], ref[4], torch.float32)


def test_gumbel_chunked_under_autocast():
    # Soft codevectors are a matmul: autocast must not turn it (or its backward) into bf16.
    case = _quantize_case(20, 2, 8, 6, torch.float32, seed=5)
    ref = _run_quantize("reference", *case, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run_quantize("chunked", *case, False)
    assert out[0].dtype == torch.float32
    for a, b in zip(out, ref):
        if a.dtype != torch.int64:
            close(a, b, torch.float32)


def test_gumbel_same_noise_on_all_paths_and_seeds():
    case = _quantize_case(40, 2, 16, 4, torch.float32, seed=2)
    ids = {s: _run_quantize("chunked", *case, True, seed=s)[1] for s in (1, 2)}
    assert not torch.equal(ids[1], ids[2])  # another seed, other samples
    assert torch.equal(ids[1], _run_quantize("reference", *case, True, seed=1)[1])
    # High temperature does not change the sample (argmax of logits + noise), only its gradient.
    assert torch.equal(ids[1], _run_quantize("chunked", *case, True, seed=1, tau=5.0)[1])


def test_gumbel_shapes_groups_and_errors():
    lg = torch.randn(6, 3, 4)  # (N, G, V) and (G, V, d) give G themselves
    book = torch.randn(3, 4, 5)
    q, ids, mean = kernels.gumbel_quantize(lg, book, 1.0, impl="chunked")
    assert q.shape == (6, 15) and ids.shape == (6, 3) and mean.shape == (3, 4)
    q1, ids1, _ = kernels.gumbel_quantize(lg.reshape(6, 12), book.reshape(12, 5), 1.0, impl="reference", groups=3)
    assert torch.equal(ids, ids1) and torch.allclose(q, q1)
    torch.testing.assert_close(mean, torch.softmax(lg, -1).mean(0))
    with pytest.raises(ValueError, match="G·V"):
        kernels.gumbel_quantize(torch.randn(6, 12), torch.randn(10, 5), 1.0, impl="chunked")


def test_gumbel_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    lg = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    bk = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    for impl in ("reference", "chunked"):
        def soft(l, b, impl=impl):
            q, _, mean = kernels.gumbel_quantize(l, b, 0.8, False, 4, impl, groups=2)
            return q, mean

        assert torch.autograd.gradcheck(soft, (lg, bk))
        # Hard: straight-through is not the derivative of the one-hot, so check what is one:
        # the gathered rows w.r.t. the codebook, the mean softmax w.r.t. the logits.
        assert torch.autograd.gradcheck(lambda b, impl=impl: kernels.gumbel_quantize(lg.detach(), b, 0.8, True, 4, impl, groups=2)[0], (bk,))
        assert torch.autograd.gradcheck(lambda l, impl=impl: kernels.gumbel_quantize(l, bk.detach(), 0.8, True, 4, impl, groups=2)[2], (lg,))


def test_gumbel_chunked_is_chunked(monkeypatch):
    from sslseq.kernels import gumbel

    monkeypatch.setattr(gumbel, "CHUNK_ELEMS", 3 * 12)  # 3 rows per chunk
    case = _quantize_case(10, 2, 6, 4, torch.float32, seed=4)
    ref = _run_quantize("reference", *case, True)
    out = _run_quantize("chunked", *case, True)
    assert torch.equal(out[1], ref[1])
    for a, b in zip(out[2:], ref[2:]):
        close(a, b, torch.float32)


# ------------------------------------------------------------------ contrastive loss


@pytest.mark.parametrize("impl", FAST_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("use_codes", [True, False])
def test_contrastive_impls_match_reference(impl, dtype, use_codes):
    context, targets, neg, codes = _contrastive_case(dtype)
    codes = codes if use_codes else None
    ref = _run_contrastive("reference", context, targets, neg, codes)
    out = _run_contrastive(impl, context, targets, neg, codes)
    assert (neg[0] == -1).all()  # the edge cases are present
    check_contrastive(out, ref, dtype)


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_contrastive_edge_rows(impl):
    context, targets, neg, codes = _contrastive_case(torch.float32)
    # Rows 0 (no negative) and 1-3 (all negatives equal the positive): only the positive is
    # left, so their loss is 0, they count as correct (argmin is a -inf negative), and the only
    # gradient is 0. Row 0 with K=0 columns left is not correct (all logits tie).
    for rows, n_correct in (([0], 1), ([1, 2, 3], 3)):
        sub = neg[rows]
        assert ((sub == -1) if rows == [0] else (sub >= 1) & (sub <= 3)).all()  # rows 1-3: utterance 1
        out = _run_contrastive(impl, context[rows], targets[rows], torch.where(sub >= 0, sub - rows[0], sub), codes[rows])
        assert float(out[0]) == 0.0 and int(out[1]) == n_correct
        assert float(out[2].abs().max()) == 0.0 and float(out[3].abs().max()) == 0.0
    empty = _run_contrastive(impl, context[:5], targets[:5], neg[:5, :0], codes[:5])
    assert int(empty[1]) == 0 and float(empty[0]) == 0.0  # no negatives at all: all tied


@needs_triton
def test_contrastive_triton_deterministic_option():
    # Few rows, many negatives: each target row receives many scattered gradients.
    context, targets, neg, codes = _contrastive_case(torch.float32, K=40, D=20, seed=1, distinct_codes=50)
    a = _run_contrastive("triton", context, targets, neg, codes, deterministic=True)
    b = _run_contrastive("triton", context, targets, neg, codes, deterministic=True)
    c = _run_contrastive("triton", context, targets, neg, codes, deterministic=False)
    ref = _run_contrastive("reference", context, targets, neg, codes)
    assert torch.equal(a[3], b[3]) and torch.equal(a[2], b[2])
    close(a[3], ref[3], torch.float32)
    close(c[3], ref[3], torch.float32)


def test_contrastive_gradcheck_float64():
    context, targets, neg, codes = _contrastive_case(torch.float32, K=4, D=3, seed=2)
    c = context.double().requires_grad_(True)
    t = targets.double().requires_grad_(True)
    # Compared by value, equal targets stop being equal under gradcheck's perturbation (the
    # -inf mask is a step function): check that mode on distinct targets.
    t_distinct = (targets.double() + torch.randn(targets.shape, dtype=torch.float64)).requires_grad_(True)
    for impl in ("reference", "chunked"):
        for cd, tt in ((codes, t), (None, t_distinct)):
            fn = lambda x, y, impl=impl, cd=cd: kernels.contrastive_loss(x, y, neg, cd, 0.5, impl)[0]  # noqa: E731
            assert torch.autograd.gradcheck(fn, (c, tt))


def test_contrastive_float64_reference_exactness():
    context, targets, neg, codes = _contrastive_case(torch.float64, seed=3)
    ref = _run_contrastive("reference", context, targets, neg, codes)
    out = _run_contrastive("chunked", context, targets, neg, codes)
    assert out[0].dtype == torch.float64
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ dispatcher


def test_dispatcher(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(kernels.ENV_IMPL, raising=False)
    assert kernels.resolve_impl(None, cpu) == "chunked"
    assert kernels.resolve_impl("reference", cpu) == "reference"
    monkeypatch.setenv(kernels.ENV_IMPL, "reference")
    assert kernels.resolve_impl(None, cpu) == "reference"
    assert kernels.resolve_impl("chunked", cpu) == "chunked"  # the argument wins
    monkeypatch.setenv(kernels.ENV_IMPL, "fused")
    with pytest.raises(SslseqError, match="not one of"):
        kernels.resolve_impl(None, cpu)
    if kernels.triton_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(SslseqError, match="TRITON_INTERPRET=1"):
            kernels.resolve_impl("triton", cpu)
    # The variable's old name is an error that names the new one, not silently ignored.
    monkeypatch.setenv("SSLSEQ_KERNEL_PATH", "chunked")
    with pytest.raises(SslseqError, match=r"SSLSEQ_KERNEL_PATH is now \$SSLSEQ_KERNEL_IMPL"):
        kernels.resolve_impl("chunked", cpu)
    monkeypatch.delenv("SSLSEQ_KERNEL_PATH")
    # The objectives follow the variable: the reference implementation builds the (K+1, N, D) stack.
    from sslseq.objectives.contrastive import contrastive_loss

    context, targets, neg, codes = _contrastive_case(torch.float32)
    monkeypatch.setenv(kernels.ENV_IMPL, "reference")
    a = contrastive_loss(context, targets, neg, codes)
    monkeypatch.setenv(kernels.ENV_IMPL, "chunked")
    b = contrastive_loss(context, targets, neg, codes)
    torch.testing.assert_close(a[0], b[0])
    assert int(a[1]) == int(b[1])


# ------------------------------------------------------------------ wav2vec 2.0 on both implementations


@pytest.mark.parametrize("impl", FAST_IMPLS)
def test_wav2vec2_steps_same_on_impl_and_reference(monkeypatch, impl):
    ref = pretrain_losses(monkeypatch, "reference")
    out = pretrain_losses(monkeypatch, impl)
    assert ref[0] != ref[-1]  # the model did learn something in between
    for r, t in zip(ref, out):
        assert t == pytest.approx(r, rel=1e-4, abs=1e-5)


def test_uniforms_never_reach_one():
    """The largest hash must map below 1: u = 1 gives infinite Gumbel noise and NaN gradients
    (seed 0, offset 34445742 hashed to the top value when 24 bits were used)."""
    from sslseq.kernels.rng import gumbel_noise, hash_u32, uniform

    off = torch.tensor([34445742, 0, 1, 2**32 - 1])
    u = uniform(off, 0)
    assert bool(((u > 0) & (u < 1)).all()) and bool(torch.isfinite(gumbel_noise(off, 0)).all())
    assert int(hash_u32(off[:1], 0)) >> 8 == 2**24 - 1  # the case that used to give u = 1
    top = (torch.tensor([2**23 - 1], dtype=torch.int64).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
    assert float(top) < 1.0
