"""wav2vec 2.0: Gumbel quantizer, negative sampling, contrastive loss (each against a literal
fairseq-style reference), the model, label-free pretraining + CTC in the trainer, and
parity with transformers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from sslseq.kernels.rng import draw_seed, gumbel_noise
from sslseq.models import CTCModel, Wav2Vec2, build_model, load, model_config_dict, save_weights
from sslseq.kernels import contrastive as contrastive_mod
from sslseq.kernels.contrastive import chunked_logits as contrastive_logits
from sslseq.objectives.contrastive import contrastive_loss, sample_negatives
from sslseq.objectives.quantizer import GumbelVectorQuantizer
from sslseq.utils import SslseqError
from test_models import small_encoder  # the small encoder every model test uses

torch.set_num_threads(1)

SR = 16000
CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor produced by any op (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.max = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max = max(self.max, t.numel())
        return out


# ------------------------------------------------------------------ quantizer


def literal_quantize(qz: GumbelVectorQuantizer, x: torch.Tensor, training: bool):
    """fairseq's GumbelVectorQuantizer.forward written out literally (x.unsqueeze(-1) * vars)."""
    B, T, C = x.shape
    G, V = qz.groups, qz.num_vars
    logits = qz.weight_proj(x.reshape(-1, C)).view(B * T * G, -1)
    k = logits.argmax(-1)
    hard = torch.zeros_like(logits).scatter_(-1, k.view(-1, 1), 1.0).view(B * T, G, -1)
    hard_probs = hard.mean(0)
    code_ppl = torch.exp(-torch.sum(hard_probs * torch.log(hard_probs + 1e-7), dim=-1)).sum()
    avg = torch.softmax(logits.view(B * T, G, -1), dim=-1).mean(0)
    prob_ppl = torch.exp(-torch.sum(avg * torch.log(avg + 1e-7), dim=-1)).sum()
    if training:
        # F.gumbel_softmax(hard=True) spelled out, with the noise of sslseq.kernels.rng (the
        # quantizer's Gumbel noise is a hash of (seed drawn from torch's generator, offset)).
        g = gumbel_noise(torch.arange(logits.numel()), draw_seed()).view_as(logits).to(logits.dtype)
        y_soft = ((logits + g) / qz.curr_temp).softmax(-1)
        y_hard = torch.zeros_like(y_soft).scatter_(-1, y_soft.max(-1, keepdim=True)[1], 1.0)
        onehot = y_hard - y_soft.detach() + y_soft
    else:
        onehot = hard
    onehot = onehot.reshape(B * T, -1)
    targets = onehot.view(B * T * G, -1).argmax(-1).view(B, T, G)
    q = (onehot.unsqueeze(-1) * qz.vars).view(B * T, G, V, -1).sum(-2).view(B, T, -1)
    return q, code_ppl, prob_ppl, targets


@pytest.mark.parametrize("training", [True, False])
def test_quantizer_matches_literal_reference(training):
    torch.manual_seed(0)
    qz = GumbelVectorQuantizer(12, num_vars=7, groups=3, vq_dim=9).double().train(training)
    with torch.no_grad():
        qz.weight_proj.weight.mul_(0.2)  # softer logits: several codes in use
    qz.set_num_updates(300)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    grads = []
    results = []
    for fn in ("ours", "literal"):
        qz.zero_grad()
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(5)  # identical Gumbel noise for both
        if fn == "ours":
            o = qz(xi)
            q, cp, pp, tg = o.x, o.code_perplexity, o.prob_perplexity, o.targets
            assert o.num_vars == 21 and o.temp == qz.curr_temp and o.code_perplexity_groups.shape == (3,)
        else:
            q, cp, pp, tg = literal_quantize(qz, xi, training)
        w = torch.linspace(-1, 1, q.numel(), dtype=torch.float64).view_as(q)
        ((q * w).sum() + 3.0 * pp).backward()
        results.append((q.detach(), cp.detach(), pp.detach(), tg))
        grads.append([t.grad.clone() for t in (xi, qz.weight_proj.weight, qz.vars)])
    (q0, cp0, pp0, tg0), (q1, cp1, pp1, tg1) = results
    assert torch.allclose(q0, q1, atol=1e-12) and torch.equal(tg0, tg1)
    assert torch.allclose(cp0.double(), cp1.double()) and torch.allclose(pp0, pp1)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert grads[0][2].abs().sum() > 0  # the codebook learns
    if training:
        assert grads[0][1].abs().sum() > 0  # straight-through: the logits learn from the targets too


def test_quantizer_padding_excluded_and_eval_codes():
    torch.manual_seed(0)
    qz = GumbelVectorQuantizer(8, num_vars=5, groups=2, vq_dim=6).eval()
    x = torch.randn(2, 6, 8)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 3:] = True
    x_junk = x.clone()
    x_junk[1, 3:] = 100 * torch.randn(3, 8)  # padding content must not matter
    a, b = qz(x, padding_mask=pad), qz(x_junk, padding_mask=pad)
    assert torch.allclose(a.prob_perplexity, b.prob_perplexity) and torch.allclose(a.code_perplexity, b.code_perplexity)
    valid = torch.cat([x[0], x[1, :3]])[None]  # the same frames without padding
    c = qz(valid)
    assert torch.allclose(a.prob_perplexity, c.prob_perplexity, atol=1e-6)
    assert torch.allclose(a.code_perplexity, c.code_perplexity, atol=1e-6)
    # Eval: hard argmax codes; the vector is the concatenation of the chosen entries.
    book = qz.vars.view(2, 5, 3)
    ids = c.targets[0]
    assert torch.equal(c.x[0], torch.cat([book[0, ids[:, 0]], book[1, ids[:, 1]]], dim=-1))
    logits = qz.weight_proj(valid[0]).view(-1, 2, 5)
    assert torch.equal(ids, logits.argmax(-1))


def test_quantizer_options():
    torch.manual_seed(0)
    shared = GumbelVectorQuantizer(8, num_vars=5, groups=2, vq_dim=6, combine_groups=True).eval()
    assert shared.vars.shape == (1, 5, 3)
    o = shared(torch.randn(1, 7, 8))
    ids, book = o.targets[0], shared.vars[0]
    assert torch.equal(o.x[0], torch.cat([book[ids[:, 0]], book[ids[:, 1]]], dim=-1))
    assert o.num_vars == 10
    deep = GumbelVectorQuantizer(8, num_vars=5, groups=2, vq_dim=6, weight_proj_depth=3, weight_proj_factor=2).train()
    assert isinstance(deep.weight_proj, torch.nn.Sequential) and deep.weight_proj[-1].in_features == 16
    o = deep(torch.randn(2, 3, 8), produce_targets=False)
    assert o.targets is None and o.x.shape == (2, 3, 6)
    o.x.sum().backward()
    assert deep.weight_proj[0][0].weight.grad.abs().sum() > 0


def test_quantizer_never_builds_frames_by_codebook():
    torch.manual_seed(0)
    N, G, V, d = 64, 2, 32, 16
    qz = GumbelVectorQuantizer(8, num_vars=V, groups=G, vq_dim=G * d).train()
    x = torch.randn(1, N, 8, requires_grad=True)
    with MaxNumel() as m:
        out = qz(x)
        (out.x.sum() + out.prob_perplexity).backward()
    assert m.max <= N * G * V < N * G * V * d  # the literal version builds (N, G*V, d)
    assert qz.vars.grad.abs().sum() > 0


def test_temperature_schedule():
    qz = GumbelVectorQuantizer(4, num_vars=3, groups=1, vq_dim=2, temp=(2.0, 0.5, 0.999995))
    assert qz.curr_temp == 2.0
    qz.set_num_updates(1000)
    assert qz.curr_temp == pytest.approx(2.0 * 0.999995**1000)
    qz.set_num_updates(10**6)
    assert qz.curr_temp == 0.5
    qz.set_num_updates(0)  # a function of the update count, not of how often it is called
    qz.set_num_updates(0)
    assert qz.curr_temp == 2.0


# ------------------------------------------------------------------ negatives


def _flat_positions(mask):
    """(N, 2) (utterance, frame) of each masked frame, row-major order."""
    return mask.nonzero()


def test_negatives_same_utterance_masked_frames_only():
    g = torch.Generator().manual_seed(0)
    B, T, K = 4, 40, 9
    mask = torch.rand(B, T, generator=g) < 0.5
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[2, 25:] = True
    pad[3, 10:] = True
    mask[3, 12:20] = True  # masked *and* padded: must never be used
    neg = sample_negatives(K, mask, pad, generator=g)
    sel = mask & ~pad
    pos = _flat_positions(sel)
    N = pos.size(0)
    assert neg.shape == (N, K) and neg.dtype == torch.long
    assert (neg >= 0).all() and (neg < N).all()
    assert (neg != torch.arange(N)[:, None]).all()  # never the positive itself
    assert (pos[neg, 0] == pos[:, 0, None]).all()  # same utterance
    assert (~pad[pos[neg, 0], pos[neg, 1]]).all() and mask[pos[neg, 0], pos[neg, 1]].all()
    # Deterministic given the generator.
    a = sample_negatives(K, mask, pad, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, sample_negatives(K, mask, pad, generator=torch.Generator().manual_seed(7)))


def test_negatives_uniform_over_the_others():
    mask = torch.zeros(1, 20, dtype=torch.bool)
    mask[0, [2, 5, 6, 11, 19]] = True
    neg = sample_negatives(4000, mask, generator=torch.Generator().manual_seed(1))
    for i in range(5):
        counts = torch.bincount(neg[i], minlength=5).float() / 4000
        assert counts[i] == 0
        others = counts[torch.arange(5) != i]
        assert (others - 0.25).abs().max() < 0.04, counts


def test_negatives_edge_cases():
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, 4] = True  # one masked frame: no possible negative
    mask[1, [1, 7, 9]] = True  # fewer masked frames than K: sampled with replacement
    neg = sample_negatives(10, mask, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (4, 10)
    assert (neg[0] == -1).all()
    for i, others in ((1, {2, 3}), (2, {1, 3}), (3, {1, 2})):
        assert set(neg[i].tolist()) == others
    assert sample_negatives(5, torch.zeros(2, 7, dtype=torch.bool)).shape == (0, 5)
    # Cross-sample negatives: any other masked frame of the batch.
    cross = sample_negatives(0, mask, generator=torch.Generator().manual_seed(0), cross_sample_negatives=300)
    assert cross.shape == (4, 300) and (cross != torch.arange(4)[:, None]).all()
    assert set(cross[0].tolist()) == {1, 2, 3}
    both = sample_negatives(2, mask, generator=torch.Generator().manual_seed(0), cross_sample_negatives=3)
    assert both.shape == (4, 5) and (both[0, :2] == -1).all() and (both[0, 2:] >= 1).all()
    # The loss for a frame without negatives is finite (only the positive remains: 0).
    ctx, tgt = torch.randn(4, 6), torch.randn(4, 6)
    logits = contrastive_logits(ctx, tgt, neg)
    assert torch.isinf(logits[0, 1:]).all() and torch.isfinite(logits[:, 0]).all()
    loss, _ = contrastive_loss(ctx, tgt, neg)
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ contrastive loss


def literal_logits(x, y, neg_idx, temp):
    """fairseq compute_preds: gather (K, N, D) negatives, cosine over the stacked (K+1, N, D)."""
    negs = y[neg_idx.clamp(min=0)].permute(1, 0, 2)  # (K, N, D)
    neg_is_pos = (y[None] == negs).all(-1) | (neg_idx.t() < 0)
    targets = torch.cat([y[None], negs], dim=0)
    logits = torch.cosine_similarity(x, targets, dim=-1) / temp
    logits[1:] = logits[1:].masked_fill(neg_is_pos, float("-inf"))
    return logits.t()  # (N, K+1)


@pytest.mark.parametrize("use_codes", [True, False])
def test_contrastive_matches_literal_reference(use_codes, monkeypatch):
    monkeypatch.setattr(contrastive_mod, "CHUNK_ELEMS", 100)  # several chunks
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 15, generator=g) < 0.6
    neg = sample_negatives(8, mask, generator=g)
    N, D = neg.size(0), 5
    # Few distinct targets: many negatives equal their positive (fairseq neg_is_pos).
    table = torch.randn(4, 3, D, generator=g, dtype=torch.float64)
    codes = torch.randint(0, 3, (N, 4), generator=g)
    codes[:, :2] = 0  # only groups 2, 3 vary: 9 distinct vectors
    y0 = table[torch.arange(4), codes].sum(1)
    x0 = torch.randn(N, D, generator=g, dtype=torch.float64)
    outs = []
    for fn in ("ours", "literal"):
        x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        if fn == "ours":
            logits = contrastive_logits(x, y, neg, codes if use_codes else None, temperature=0.1)
            loss, n_correct = contrastive_loss(x, y, neg, codes if use_codes else None, temperature=0.1)
            assert torch.equal(logits, contrastive_logits(x, y, neg, None, 0.1))  # codes ⇔ values here
        else:
            logits = literal_logits(x.double(), y.double(), neg, 0.1)
            loss = F.cross_entropy(logits, torch.zeros(N, dtype=torch.long), reduction="sum")
            best, worst = logits.argmax(-1) == 0, logits.argmin(-1) == 0
            n_correct = best.sum() - (best & worst).sum()
        loss.backward()
        outs.append((logits.detach(), loss.detach(), int(n_correct), x.grad, y.grad))
    (l0, s0, c0, gx0, gy0), (l1, s1, c1, gx1, gy1) = outs
    same = torch.isinf(l1)
    assert same[:, 1:].any() and not same[:, 0].any()
    assert torch.equal(torch.isinf(l0), same)
    assert l0.dtype == torch.float64 and torch.allclose(l0[~same], l1[~same], rtol=1e-10, atol=1e-10)
    assert torch.allclose(s0, s1, rtol=1e-10) and c0 == c1
    assert torch.allclose(gx0, gx1, rtol=1e-9, atol=1e-10) and torch.allclose(gy0, gy1, rtol=1e-9, atol=1e-10)


def test_contrastive_never_builds_all_negatives(monkeypatch):
    monkeypatch.setattr(contrastive_mod, "CHUNK_ELEMS", 256)
    N, K, D = 50, 10, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, requires_grad=True)
    y = torch.randn(N, D, generator=g, requires_grad=True)
    neg = torch.randint(0, N, (N, K), generator=g)
    codes = torch.randint(0, 50, (N, 2), generator=g)
    with MaxNumel() as m:
        loss, _ = contrastive_loss(x, y, neg, codes)
        loss.backward()
    # Largest: the (N, K, G) code comparison; the literal version builds (K+1, N, D) floats.
    assert m.max <= N * K * 2 < (K + 1) * N * D // 4
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


# ------------------------------------------------------------------ model


def w2v_cfg(**over):
    cfg = {"name": "wav2vec2", "final_dim": 16, "latent_vars": 12, "latent_groups": 2, "num_negatives": 10,
           "encoder": small_encoder()}
    cfg.update(over)
    return cfg


def batch(lens_sec=(1.0, 0.7, 0.45), seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([int(s * SR) for s in lens_sec])
    wav = torch.randn(len(lens), int(lens.max()), generator=g) * 0.1
    return {"wav": wav * (torch.arange(wav.size(1))[None, :] < lens[:, None]), "wav_lens": lens}


def test_wav2vec2_forward_backward():
    torch.manual_seed(0)
    model = build_model(w2v_cfg())
    assert isinstance(model, Wav2Vec2) and model.needs_labels is False
    assert model.cfg.encoder.mask_prob == 0.65  # wav2vec 2.0 default for keys the config omits
    out = model(batch())
    n = out.sample_size
    assert torch.isfinite(out.loss) and n == out.logs["n_masked"] > 0
    assert set(out.logs) >= {"loss", "loss_bits", "chance_bits", "acc", "code_perplexity", "code_perplexity_g0",
                             "prob_perplexity", "temp", "n_masked", "contrastive", "diversity", "features_pen"}
    assert out.logs["chance_bits"] == pytest.approx(math.log2(11))
    # Loss = contrastive + 0.1 * diversity * n + 10 * feature penalty * n (fairseq Wav2vecCriterion).
    expect = out.logs["contrastive"] * n + 0.1 * out.logs["diversity"] * n + 10 * out.logs["features_pen"] * n
    assert out.loss.item() == pytest.approx(expect, rel=1e-5)
    assert out.logs["diversity"] == pytest.approx((24 - out.logs["prob_perplexity"]) / 24, rel=1e-5)
    # Near chance at init: ln(K+1) nats per frame, give or take.
    assert abs(out.logs["contrastive"] - math.log(11)) < 0.35 * math.log(11)
    out.loss.backward()
    for p in (model.quantizer.vars, model.quantizer.weight_proj.weight, model.project_q.weight, model.final_proj.weight,
              model.encoder.mask_emb, model.encoder.feature_extractor.conv_layers[0].conv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_wav2vec2_unquantized_targets_and_config_errors():
    torch.manual_seed(0)
    model = build_model(w2v_cfg(quantize_targets=False))
    assert model.quantizer is None
    out = model(batch())
    assert torch.isfinite(out.loss) and "code_perplexity" not in out.logs
    out.loss.backward()
    with pytest.raises(SslseqError, match="quantize_input"):
        build_model(w2v_cfg(quantize_input=True))
    with pytest.raises(SslseqError, match="divisible"):
        build_model(w2v_cfg(latent_groups=3))
    with pytest.raises(SslseqError, match="Did you mean: num_negatives"):
        build_model(w2v_cfg(num_negative=3))


def test_wav2vec2_set_num_updates_and_eval():
    torch.manual_seed(0)
    model = build_model(w2v_cfg(latent_temp=[2.0, 0.5, 0.9]))
    model.set_num_updates(3)
    assert model.quantizer.curr_temp == pytest.approx(2.0 * 0.9**3)
    model.eval()
    torch.manual_seed(1)
    a = model(batch())
    torch.manual_seed(1)
    b = model(batch())
    assert a.loss.item() == b.loss.item() and a.logs["temp"] == pytest.approx(2.0 * 0.9**3)


def test_collapsed_codebook_is_logged_for_the_health_checks():
    torch.manual_seed(0)
    model = build_model(w2v_cfg())
    with torch.no_grad():  # every frame picks code 0 of each group: perplexity 2 of at most 24
        model.quantizer.weight_proj.weight.zero_()
        model.quantizer.weight_proj.bias.zero_()
        model.quantizer.weight_proj.bias[[0, 12]] = 100.0
    out = model(batch())
    assert out.logs["code_perplexity"] == pytest.approx(2.0, abs=1e-3)
    bound = min(model.cfg.latent_vars, out.sample_size)
    assert out.logs["codebook_use"] == pytest.approx(1.0 / bound, abs=1e-4)  # < 0.1: the trainer warns
    assert out.logs["loss_bits"] == pytest.approx(out.logs["contrastive"] / math.log(2))


def test_wav2vec2_load_round_trip_and_ctc(tmp_path):
    torch.manual_seed(0)
    model = build_model(w2v_cfg())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(model)}))
    save_weights(model, tmp_path / "model.safetensors")
    loaded = load(tmp_path)
    assert isinstance(loaded, Wav2Vec2) and loaded.cfg == model.cfg
    b = batch()
    h0, _ = model.extract_features(b["wav"], b["wav_lens"])
    h1, _ = loaded.extract_features(b["wav"], b["wav_lens"])
    assert all(torch.equal(x, y) for x, y in zip(h0, h1))
    ctc = CTCModel.from_pretrained(loaded, {"name": "ctc", "vocab_size": 12})
    sd = ctc.encoder.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in loaded.encoder.state_dict().items())


def test_tiny_and_base_yaml_build():
    tiny = yaml.safe_load((CONF / "model_wav2vec2_tiny.yaml").read_text())
    hubert = yaml.safe_load((CONF / "model_hubert_tiny.yaml").read_text())
    arch = ("conv_layers", "extractor_mode", "conv_bias")
    assert {k: tiny["encoder"][k] for k in arch} == {k: hubert["encoder"][k] for k in arch}
    assert {k: v for k, v in tiny["encoder"]["encoder"].items()} == hubert["encoder"]["encoder"]
    m = build_model(tiny)
    assert m.frame_rate == 50.0 and sum(p.numel() for p in m.parameters()) < 6e6
    base = yaml.safe_load((CONF / "model_wav2vec2_base.yaml").read_text())
    with torch.device("meta"):  # shapes only
        mb = build_model(base)
    n = sum(p.numel() for p in mb.parameters())
    assert 94.5e6 < n < 95.5e6, n  # 95.04M as published
    assert mb.quantizer.vars.shape == (1, 640, 128) and mb.cfg.encoder.mask_prob == 0.65


# ------------------------------------------------------------------ trainer


def test_config_needs_labels_only_for_hubert(tmp_path):
    from sslseq.train.config import load_train_config

    over = [f"out_dir={tmp_path / 'x'}", "data.train=data/train", "data.valid=data/dev"]
    cfg = load_train_config(CONF / "pretrain_wav2vec2_tiny.yaml", over)
    assert cfg.model["name"] == "wav2vec2" and cfg.data.labels_train is None
    with pytest.raises(SslseqError, match="data.labels_train"):
        load_train_config(CONF / "pretrain_hubert_tiny.yaml", over)


def test_wav2vec2_then_ctc_on_tiny_corpus(tmp_path, tiny_data):
    import json

    from sslseq.train.trainer import train_from_config

    small = ["data.max_batch_seconds=8", "max_valid_batches=1", "save_interval=1", "log_interval=1"]
    pre = train_from_config(
        CONF / "pretrain_wav2vec2_tiny.yaml",
        [f"out_dir={tmp_path / 'w2v'}", f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}",
         "optim.max_steps=2", "optim.update_freq=2", "data.max_sample_seconds=2", *small],
    )
    w2v = load(pre)
    assert isinstance(w2v, Wav2Vec2)
    rec = [json.loads(line) for line in (pre / "log" / "train.jsonl").read_text().splitlines()]
    train = [r for r in rec if "loss" in r]
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in train)
    # One temperature update per optimizer step (2 micro-batches each): step s ran at 2 * 0.995**(s-1).
    assert [r["temp"] for r in train] == pytest.approx([2.0, 2.0 * 0.995])
    assert math.isfinite([r for r in rec if "valid_loss" in r][-1]["valid_loss"])

    ctc_over = [f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}", "optim.max_steps=2",
                "model.freeze_encoder_steps=1", "data.max_sample_seconds=8", *small]
    ft = train_from_config(CONF / "ctc_tiny.yaml", [f"out_dir={tmp_path / 'ctc'}", f"init={pre}", *ctc_over])
    ctc = load(ft)
    ws, cs = w2v.state_dict(), ctc.state_dict()
    front = [k for k in cs if k.startswith("encoder.feature_extractor.")]
    assert front and all(torch.equal(cs[k], ws[k]) for k in front)
    assert any(not torch.equal(cs[k], ws[k]) for k in cs if k.startswith("encoder.encoder.layers."))


# ------------------------------------------------------------------ transformers parity


def _hf_config(transformers, **over):
    kw = dict(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm="layer", conv_bias=True, do_stable_layer_norm=False,
    )
    kw.update(over)
    return transformers.Wav2Vec2Config(**kw)


@pytest.mark.parametrize("stable", [False, True])
def test_hf_wav2vec2_encoder_parity_padded(stable):
    transformers = pytest.importorskip("transformers")
    from sslseq.convert.hf import speech_encoder_from_hf

    torch.manual_seed(0)
    hf = transformers.Wav2Vec2Model(_hf_config(transformers, do_stable_layer_norm=stable)).eval()
    ours = speech_encoder_from_hf(hf)
    b = batch()
    wav, lens = b["wav"], b["wav_lens"]
    hs, frame_lens = ours.extract_features(wav, lens)
    att = (torch.arange(wav.size(1))[None, :] < lens[:, None]).long()
    with torch.no_grad():
        ref = hf(wav, attention_mask=att, output_hidden_states=True).hidden_states
    assert len(hs) == len(ref) == 3
    for i in range(len(lens)):
        T = int(frame_lens[i])
        for layer, (h, h_ref) in enumerate(zip(hs, ref)):
            diff = (h[i, :T] - h_ref[i, :T]).abs().max().item()
            assert diff <= 1e-4, (i, layer, diff)


def test_hf_wav2vec2_pretraining_loss_parity(monkeypatch):
    """Same weights, masks and negatives: our contrastive loss and code perplexity equal
    transformers' Wav2Vec2ForPreTraining (eval mode: hard codes, no dropout)."""
    transformers = pytest.importorskip("transformers")
    from sslseq.convert.hf import wav2vec2_from_hf
    from sslseq.models import wav2vec2 as w2v_mod
    from sslseq.nn import encoder as enc_mod

    torch.manual_seed(0)
    hf_cfg = _hf_config(transformers, num_codevectors_per_group=16, num_codevector_groups=2, codevector_dim=16,
                        proj_codevector_dim=12, num_negatives=6, mask_time_prob=0.5)
    hf = transformers.Wav2Vec2ForPreTraining(hf_cfg).eval()
    ours = wav2vec2_from_hf(hf).eval()
    b = batch()
    wav, lens = b["wav"], b["wav_lens"]
    frame_lens = ours.encoder.output_lengths(lens)
    B, T = len(lens), int(frame_lens.max())
    g = torch.Generator().manual_seed(3)
    pad = torch.arange(T)[None, :] >= frame_lens[:, None]
    mask = (torch.rand(B, T, generator=g) < 0.5) & ~pad
    neg = sample_negatives(6, mask, generator=g)
    monkeypatch.setattr(enc_mod, "compute_mask_indices", lambda *a, **k: mask.clone())
    monkeypatch.setattr(w2v_mod, "sample_negatives", lambda *a, **k: neg.clone())
    out = ours(b)
    # transformers indexes negatives into the flattened (B*T) frames.
    flat = mask.reshape(-1).nonzero()[:, 0]
    hf_neg = torch.zeros(B * T, 6, dtype=torch.long)
    hf_neg[flat] = flat[neg]
    att = (torch.arange(wav.size(1))[None, :] < lens[:, None]).long()
    with torch.no_grad():
        ref = hf(wav, attention_mask=att, mask_time_indices=mask, sampled_negative_indices=hf_neg.view(B, T, 6))
    n = int(mask.sum())
    assert out.sample_size == n
    assert out.logs["contrastive"] * n == pytest.approx(ref.contrastive_loss.item(), rel=1e-4)
    assert out.logs["code_perplexity"] == pytest.approx(ref.codevector_perplexity.item(), rel=1e-4)
