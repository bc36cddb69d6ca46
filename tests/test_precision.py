"""CPU bf16: native-bf16 detection (sslseq.hw), what ``precision=auto`` picks from it, and the
numerically sensitive pieces staying float32 inside a CPU bf16 autocast region, as on GPU.

The shapes are tiny: on a CPU without bf16 matrix instructions bf16 matmuls are very slow.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from sslseq import hw
from sslseq.train.trainer import resolve_precision

from test_models import build_model, ctc_batch, ctc_cfg  # the small CTC model of the model tests


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


# ------------------------------------------------------------------ detection

SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC_AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_detection_reads_cpuinfo_and_torch_flags():
    assert hw.detect_cpu_bf16(None, SAPPHIRE, "x86_64").features == ("amx_bf16", "avx512_bf16")
    no = hw.detect_cpu_bf16({"avx2": True, "amx_bf16": False}, EPYC_AVX2, "x86_64", "AVX2", False)
    assert not no.native and no.sources == ("torch.cpu.get_capabilities", "/proc/cpuinfo")
    assert "no native bf16" in no.describe() and "AVX2" in no.describe()
    # torch's CPUID probe alone (no /proc: macOS, some containers) is enough
    assert hw.detect_cpu_bf16({"avx512_bf16": True}, None, "x86_64").native
    assert hw.detect_cpu_bf16(None, GRAVITON3, "aarch64").features == ("bf16",)
    assert not hw.detect_cpu_bf16(None, GRAVITON3, "x86_64").native  # 'bf16' is an Arm flag name
    assert not hw.detect_cpu_bf16(None, None, "x86_64").native
    assert isinstance(hw.cpu_bf16(), hw.CpuBf16)  # this machine: probes without failing


@pytest.fixture
def sslseq_log(caplog):
    """caplog on the sslseq logger (it does not propagate to the root logger)."""
    logger = logging.getLogger("sslseq")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def _fake_cpu(monkeypatch, native: bool):
    monkeypatch.setattr(hw, "cpu_bf16", lambda: hw.detect_cpu_bf16(None, SAPPHIRE if native else EPYC_AVX2, "x86_64"))


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, sslseq_log):
    caplog = sslseq_log
    _fake_cpu(monkeypatch, native=True)
    assert resolve_precision("auto", cpu=True) == "bf16"
    assert "native bf16 (amx_bf16, avx512_bf16)" in caplog.text and "-> bf16" in caplog.text
    _fake_cpu(monkeypatch, native=False)
    assert resolve_precision("auto", cpu=True) == "fp32"
    assert resolve_precision("fp32", cpu=True) == "fp32"
    caplog.clear()
    assert resolve_precision("bf16", cpu=True) == "bf16"  # explicit: obeyed, with a warning
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "will be slow" in warning.getMessage()
    _fake_cpu(monkeypatch, native=True)
    caplog.clear()
    assert resolve_precision("bf16", cpu=True) == "bf16" and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_auto_precision_here_is_what_the_cpu_supports():
    assert resolve_precision("auto", cpu=True) == ("bf16" if hw.cpu_bf16().native else "fp32")


# ------------------------------------------------------------------ fp32 islands under CPU autocast


def test_kaldi_features_are_fp32_under_cpu_autocast():
    from sslseq.features import kaldi

    g = torch.Generator().manual_seed(0)
    wav, lens = 0.3 * torch.randn(2, 8000, generator=g), torch.tensor([8000, 6000])
    for fn in (kaldi.fbank, kaldi.mfcc):
        ref, n_ref = fn(wav, lens)
        with bf16_autocast():  # fbank used to fail here (index_copy_ of bf16 mel blocks into fp32)
            out, n = fn(wav, lens)
        assert out.dtype == torch.float32 and torch.equal(n, n_ref)
        assert torch.equal(out, ref), fn.__name__


def test_fbank_frontend_is_fp32_under_cpu_autocast():
    from sslseq.nn.fbank import FbankFrontend

    front = FbankFrontend()
    wav, lens = 0.3 * torch.randn(2, 16000), torch.tensor([16000, 12000])
    ref = front(wav, lens)
    with bf16_autocast():
        out = front(wav, lens)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_kmeans_distances_are_fp32_under_cpu_autocast():
    from sslseq.cluster import kmeans

    g = torch.Generator().manual_seed(0)
    x, c = 10 * torch.randn(500, 39, generator=g), 10 * torch.randn(20, 39, generator=g)
    labels, dist = kmeans.assign(x, c, cpu_threads=1)
    with bf16_autocast():  # bf16 addmm flipped nearest centroids before
        labels_ac, dist_ac = kmeans.assign(x, c, cpu_threads=1)
        init = kmeans.kmeans_plus_plus_init(x, 5, torch.Generator().manual_seed(1))
    assert dist_ac.dtype == torch.float32 and torch.equal(labels_ac, labels) and torch.equal(dist_ac, dist)
    assert torch.equal(init, kmeans.kmeans_plus_plus_init(x, 5, torch.Generator().manual_seed(1)))


def test_contrastive_logits_and_loss_are_fp32_under_cpu_autocast():
    from sslseq.kernels.contrastive import chunked_logits as contrastive_logits
    from sslseq.objectives.contrastive import contrastive_loss

    g = torch.Generator().manual_seed(0)
    ctx, tgt = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    idx = torch.randint(0, 64, (64, 10), generator=g)
    lin = torch.nn.Linear(32, 32)
    with bf16_autocast():
        c, t = lin(ctx), lin(tgt)  # the projections run in bf16, as in a model
        logits = contrastive_logits(c, t, idx)
        loss, correct = contrastive_loss(c, t, idx)
    assert c.dtype == torch.bfloat16 and logits.dtype == torch.float32 and loss.dtype == torch.float32
    # the same bf16 inputs without autocast: identical fp32 logits and loss
    ref_logits = contrastive_logits(c.detach(), t.detach(), idx)
    ref_loss, ref_correct = contrastive_loss(c.detach(), t.detach(), idx)
    assert torch.allclose(logits, ref_logits, rtol=1e-6, atol=1e-6)
    assert torch.allclose(loss, ref_loss, rtol=1e-6) and int(correct) == int(ref_correct)
    loss.backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


def test_quantizer_softmax_is_fp32_under_cpu_autocast():
    from sslseq.objectives.quantizer import GumbelVectorQuantizer

    torch.manual_seed(0)
    q = GumbelVectorQuantizer(32, num_vars=16, groups=2, vq_dim=16).eval()
    x = torch.randn(2, 20, 32)
    ref = q(x)
    with bf16_autocast():
        out = q(x)
    assert out.prob_perplexity.dtype == torch.float32
    # only the logits' projection is bf16: the perplexity of the mean softmax stays close
    assert out.prob_perplexity.item() == pytest.approx(ref.prob_perplexity.item(), rel=2e-2)
    q.train()
    with bf16_autocast():
        out = q(x)
    assert out.prob_perplexity.dtype == torch.float32 and torch.isfinite(out.x.float()).all()


def test_ctc_log_probs_and_loss_are_fp32_under_cpu_autocast():
    torch.manual_seed(0)
    model = build_model(ctc_cfg()).eval()
    b = ctc_batch()
    ref = model(b).loss
    with bf16_autocast():
        lp, lens = model.log_probs(b["wav"], b["wav_lens"])
        out = model(b)
    assert lp.dtype == torch.float32 and out.loss.dtype == torch.float32
    assert torch.allclose(lp.exp().sum(-1), torch.ones(()), atol=1e-5)  # normalised in fp32
    ctc = F.ctc_loss(lp.transpose(0, 1), b["targets"].clamp(min=0), lens, b["target_lens"], reduction="sum")
    assert torch.allclose(out.loss, ctc, rtol=1e-5)
    assert out.loss.item() == pytest.approx(ref.item(), rel=5e-2)  # bf16 encoder, fp32 loss
