"""The small-compute ("cpu") encoders: the fbank + conv-subsampler frontend at 25 Hz, HuBERT's
100 Hz labels taken every 4th frame, and every family's CPU config building, training a step
and fine-tuning with CTC from the same encoder layout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from sslseq.models import build_model
from sslseq.nn.encoder import SpeechEncoder, SpeechEncoderConfig
from sslseq.nn.fbank import FbankConvFrontend, FbankFrontend
from sslseq.utils import SslseqError

torch.set_num_threads(1)

SR = 16000
CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"
FAMILIES = ("hubert", "wav2vec2", "w2vbert", "dinosr")


def audio_batch(lens_samples=(16000, 11210, 7203), seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens_samples)
    t = torch.arange(int(lens.max()))
    wav = 0.1 * torch.randn(len(lens), t.numel(), generator=g) + 0.3 * torch.sin(2 * math.pi * 300 * t / SR)
    return wav * (t[None, :] < lens[:, None]), lens


def test_fbank_conv_frontend_rate_lengths_and_batch_independence():
    front = FbankConvFrontend(80, [(32, 3, 2), (32, 3, 2)])
    assert front.total_stride == 640 and SR / front.total_stride == 25.0
    # fbank frames: 1 + (S - 400) // 160; each conv: (n - 3) // 2 + 1
    lens = torch.tensor([16000, 11210, 7203, 400 + 160 * 6])
    fb = 1 + (lens - 400) // 160
    want = ((fb - 3) // 2 + 1 - 3) // 2 + 1
    assert torch.equal(front.output_lengths(lens), want)
    assert front.receptive_field == 400 + 160 * 6  # 7 fbank frames make one output frame
    wav, n = audio_batch()
    out = front(wav, n)
    assert out.shape[:2] == (3, 32) and out.shape[2] == int(front.output_lengths(n).max())
    for i, k in enumerate(n.tolist()):
        alone = front(wav[i : i + 1, :k])
        T = int(front.output_lengths(torch.tensor([k])))
        assert alone.shape[2] == T
        assert torch.allclose(out[i, :, :T], alone[0], atol=1e-5)
    with pytest.raises(SslseqError, match="receptive field"):
        front(torch.zeros(1, front.receptive_field - 1))
    with pytest.raises(SslseqError, match="fbank_conv_layers"):
        FbankConvFrontend(80, [(32, 3)])


def test_fbank_conv_uses_the_same_normalised_fbank():
    """The subsampler reads exactly the w2v-BERT frontend's normalised fbank (unstacked)."""
    wav, n = audio_batch()
    front = FbankConvFrontend(80, [(8, 1, 1)])
    with torch.no_grad():
        front.conv_layers[0].weight.zero_()
        front.conv_layers[0].weight[:, :8, 0] = torch.eye(8)
        front.conv_layers[0].bias.zero_()
    ref = FbankFrontend(80, 1)(wav, n)[:, :8]
    assert torch.allclose(front(wav, n), torch.nn.functional.gelu(ref), atol=1e-6)


def test_encoder_fbank_conv_is_trained_and_masks_at_25_hz():
    cfg = SpeechEncoderConfig(frontend="fbank_conv", fbank_conv_layers=[(32, 3, 2), (32, 3, 2)], feature_grad_mult=0.5,
                              mask_prob=0.5, mask_length=2)
    cfg.encoder.embed_dim, cfg.encoder.ffn_dim, cfg.encoder.num_layers, cfg.encoder.num_heads = 32, 64, 1, 2
    cfg.encoder.conv_pos, cfg.encoder.conv_pos_groups = 4, 4
    enc = SpeechEncoder(cfg)
    assert enc.frame_rate == 25.0
    wav, n = audio_batch()
    out = enc(wav, n, mask=True)
    assert torch.equal(out.frame_lens, enc.output_lengths(n)) and out.mask_indices.any()
    assert out.features_pen > 0  # a learned frontend: the penalty is available
    out.x.sum().backward()
    assert enc.feature_extractor.conv_layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(SslseqError, match="fbank_conv"):
        SpeechEncoder(SpeechEncoderConfig(frontend="mel"))


def test_hubert_25hz_takes_every_4th_100hz_label_and_rejects_other_rates():
    model_cfg = yaml.safe_load((CONF / "model_hubert_cpu.yaml").read_text())
    m = build_model({**model_cfg, "num_classes": 10})
    assert m.frame_rate == 25.0 and m.label_ratio == 4
    labels = torch.arange(40)[None, :] % 10
    targets = m.align_labels(labels, torch.tensor([40]), torch.tensor([10]), 10)
    assert targets[0].tolist() == [0, 4, 8, 2, 6, 0, 4, 8, 2, 6]  # label 4t for frame t
    for rate in (30.0, 10.0):  # not an integer multiple of 25 Hz
        with pytest.raises(SslseqError, match="not an integer multiple"):
            build_model({**model_cfg, "num_classes": 10, "label_rate": rate})


@pytest.mark.parametrize("family", FAMILIES)
def test_cpu_config_builds_at_25_hz_and_trains_a_step(family):
    pre = yaml.safe_load((CONF / f"pretrain_{family}_cpu.yaml").read_text())
    model_cfg = yaml.safe_load((CONF / pre["model_config"]).read_text())
    assert model_cfg["name"] == family and model_cfg["encoder"]["frontend"] == "fbank_conv"
    if family == "hubert":
        model_cfg["num_classes"] = 20
    torch.manual_seed(0)
    m = build_model(model_cfg)
    assert m.frame_rate == 25.0
    assert sum(p.numel() for p in m.parameters()) < 8e6  # small enough for 2 CPU cores
    wav, n = audio_batch((32000, 28000))
    batch = {"wav": wav, "wav_lens": n}
    if family == "hubert":
        batch["labels"] = torch.randint(0, 20, (2, 198))
        batch["label_lens"] = 1 + (n - 400) // 160
    m.train()
    out = m(batch)
    assert out.sample_size > 0 and math.isfinite(float(out.loss.detach()))
    (out.loss / out.sample_size).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_ctc_cpu_config_fine_tunes_each_family_and_scratch_has_its_layout(family):
    """The family's CTC config takes the pretrained encoder; init=none builds the same layout."""
    from sslseq.models import CTCModel
    from sslseq.models.ctc import TOP_LEVEL_FT_FIELDS

    ctc_file = CONF / f"ctc_{family}_cpu.yaml"
    ctc_file = ctc_file if ctc_file.is_file() else CONF / "ctc_cpu.yaml"
    ctc = yaml.safe_load(ctc_file.read_text())
    pre = yaml.safe_load((CONF / f"pretrain_{family}_cpu.yaml").read_text())
    model_cfg = yaml.safe_load((CONF / pre["model_config"]).read_text())
    scratch_enc = yaml.safe_load((CONF / ctc["model_config"]).read_text())["encoder"]
    layout = ("frontend", "fbank_conv_layers")
    assert {k: scratch_enc[k] for k in layout} == {k: model_cfg["encoder"][k] for k in layout}
    inner = ("layer_type", "embed_dim", "ffn_dim", "num_layers", "num_heads")
    assert {k: scratch_enc["encoder"].get(k) for k in inner} == {k: model_cfg["encoder"]["encoder"].get(k) for k in inner}
    if family == "hubert":
        model_cfg["num_classes"] = 20
    ssl = build_model(model_cfg)
    # as the trainer passes it: the CTC config's model section with the scratch encoder section
    # (YAML lists, where the pretrained config holds tuples)
    enc = {k: v for k, v in scratch_enc.items() if k not in TOP_LEVEL_FT_FIELDS}
    enc["encoder"] = {k: v for k, v in enc["encoder"].items() if k not in TOP_LEVEL_FT_FIELDS}
    m = CTCModel.from_pretrained(ssl, {**ctc["model"], "encoder": enc, "vocab_size": 30})
    assert m.frame_rate == 25.0
