"""w2v-BERT: the fbank frontend against transformers' SeamlessM4TFeatureExtractor, the conformer
against transformers' Wav2Vec2BertModel (tiny and base widths, every layer, padded batches,
through `sslseq convert --from hf`), the model's targets / gradients / logs, configs, and
label-free pretraining + CTC fine-tuning in the trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from sslseq.models import CTCModel, W2VBert, build_model, load, model_config_dict, save_weights
from sslseq.models.layer_features import LayerFeatures
from sslseq.nn.conformer import ConformerEncoder
from sslseq.nn.fbank import FbankFrontend
from sslseq.nn.transformer import TransformerEncoderConfig
from sslseq.utils import SslseqError

torch.set_num_threads(1)

SR = 16000
CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"


def audio_batch(lens_samples=(16000, 11210, 7203), seed=0):
    """Noise plus a tone (so the fbank has structure), zero beyond each length."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lens_samples)
    t = torch.arange(int(lens.max()))
    wav = 0.1 * torch.randn(len(lens), t.numel(), generator=g) + 0.3 * torch.sin(2 * math.pi * 300 * t / SR)
    return wav * (t[None, :] < lens[:, None]), lens


def small_w2vbert(**over):
    enc = {"dropout_input": 0.0, "dropout_features": 0.0,
           "encoder": {"embed_dim": 48, "ffn_dim": 96, "num_layers": 3, "num_heads": 4, "depthwise_kernel": 5,
                       "max_rel_pos_left": 8, "max_rel_pos_right": 2, "layerdrop": 0.0}}
    cfg = {"name": "w2vbert", "num_mlm_layers": 1, "final_dim": 16, "latent_vars": 12, "latent_groups": 1,
           "latent_dim": 16, "num_negatives": 10, "latent_temp": [2.0, 0.5, 0.995], "encoder": enc}
    cfg.update(over)
    return cfg


def wav_batch(**kw):
    wav, lens = audio_batch(**kw)
    return {"wav": wav, "wav_lens": lens}


# ------------------------------------------------------------------ frontend


def test_fbank_frontend_matches_seamless_feature_extractor():
    transformers = pytest.importorskip("transformers")
    fe = transformers.SeamlessM4TFeatureExtractor()  # constructs offline: Kaldi mel matrix, no download
    # 99, 69, 43 and 24 fbank frames: odd counts drop their last frame, as the reference's stacking does.
    lens = (16000, 11210, 7203, 4240)
    wav, n = audio_batch(lens)
    ref = fe([wav[i, :k].numpy() for i, k in enumerate(lens)], sampling_rate=SR, return_tensors="pt")
    front = FbankFrontend()
    ours = front(wav, n).transpose(1, 2)
    frame_lens = front.output_lengths(n)
    assert ours.shape[2] == 160 and front.out_dim == 160 and SR / front.total_stride == 50.0
    assert frame_lens.tolist() == ref["attention_mask"].sum(1).tolist() == [49, 34, 21, 12]
    for i, T in enumerate(frame_lens.tolist()):
        diff = (ours[i, :T] - ref["input_features"][i, :T]).abs().max().item()
        assert diff <= 2e-4, (i, diff)  # float32 Kaldi fbank vs numpy float64
        assert (ours[i, T:] == 0).all()


def test_fbank_frontend_batch_independent():
    wav, n = audio_batch()
    front = FbankFrontend()
    batched = front(wav, n)
    for i, k in enumerate(n.tolist()):
        alone = front(wav[i : i + 1, :k])
        T = alone.shape[2]
        assert torch.allclose(batched[i, :, :T], alone[0], atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed-precision training: the fbank stays float32
        auto = front(wav, n)
    assert auto.dtype == torch.float32 and torch.equal(auto, batched)
    with pytest.raises(SslseqError, match="shorter than one stacked fbank frame"):
        front(torch.zeros(1, 300))


# ------------------------------------------------------------------ conformer


def test_conformer_padding_never_leaks():
    torch.manual_seed(0)
    cfg = TransformerEncoderConfig(embed_dim=32, ffn_dim=64, num_layers=2, num_heads=4, dropout=0.0, attention_dropout=0.0,
                                   layerdrop=0.0, layer_type="conformer", activation="swish", depthwise_kernel=7,
                                   max_rel_pos_left=4, max_rel_pos_right=2)
    enc = ConformerEncoder(cfg).eval()
    x = torch.randn(2, 20, 32)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[1, 13:] = True
    junk = x.clone()
    junk[1, 13:] = 100 * torch.randn(7, 32)
    with torch.no_grad():
        a, ha = enc(x, pad, output_hidden_states=True)
        b, _ = enc(junk, pad)
        alone, _ = enc(x[1:, :13])
    assert len(ha) == 3 and torch.equal(a, ha[-1])
    assert torch.equal(a[1, :13], b[1, :13])
    assert torch.allclose(a[1, :13], alone[0], atol=1e-5)


# ------------------------------------------------------------------ transformers parity


def _hf_w2vbert(transformers, cls_name="Wav2Vec2BertModel", **over):
    kw = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
              conv_depthwise_kernel_size=5, left_max_position_embeddings=6, right_max_position_embeddings=3,
              mask_time_prob=0.05)
    kw.update(over)
    cfg = transformers.Wav2Vec2BertConfig(**kw)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():  # transformers zero-inits biases / unit-inits norms: randomise them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "pos_bias" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _parity(ours, hf, wav, lens) -> list[float]:
    """Max |ours - transformers| per hidden state, over every frame (padding included). transformers
    gets the features our frontend computes, with the attention mask of our frame lengths."""
    base = getattr(hf, "wav2vec2_bert", hf)
    with torch.no_grad():
        hs, frame_lens = ours.extract_features(wav, lens)
        front = getattr(ours, "feature_extractor", None) or ours.encoder.feature_extractor  # SpeechEncoder or model
        feats = front(wav, lens).transpose(1, 2)
        att = (torch.arange(feats.shape[1])[None, :] < frame_lens[:, None]).long()
        ref = base(feats, attention_mask=att, output_hidden_states=True).hidden_states
    assert len(hs) == len(ref) == hf.config.num_hidden_layers + 1
    assert all(h.shape == r.shape for h, r in zip(hs, ref))
    return [(h - r).abs().max().item() for h, r in zip(hs, ref)]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_w2vbert_tiny_parity_through_convert(tmp_path, attn):
    transformers = pytest.importorskip("transformers")
    from sslseq.cli import main as cli_main

    hf = _hf_w2vbert(transformers)
    hf.save_pretrained(tmp_path / "hf")
    hf.set_attn_implementation(attn)  # eager: transformers' own matmul-softmax attention, not SDPA
    assert cli_main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "exp")]) == 0
    ours = load(tmp_path / "exp")
    assert type(ours).__name__ == "EncoderOnly" and ours.frame_rate == 50.0
    cfg = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert cfg["converted_from"]["architecture"] == "Wav2Vec2BertModel"
    assert cfg["model"]["encoder"]["frontend"] == "fbank" and cfg["model"]["encoder"]["encoder"]["layer_type"] == "conformer"
    wav, lens = audio_batch()  # 49, 34, 21 frames: longer than the clipping window [-6, 3]
    diffs = _parity(ours, hf, wav, lens)
    print(f"w2v-BERT tiny parity ({attn}), max abs diff per hidden state:", diffs)
    assert max(diffs) <= 1e-4, diffs
    with torch.no_grad():  # the comparison can fail: a small change to one position embedding shows
        ours.encoder.encoder.layers[1].self_attn.distance_embedding.weight[0] += 1e-2
    assert _parity(ours, hf, wav, lens)[-1] > 1e-6
    # Stage 6 starts from it: a CTC model takes over the conformer encoder.
    ft = CTCModel.from_pretrained(ours, {"vocab_size": 5})
    assert all(torch.equal(ft.encoder.state_dict()[k], v) for k, v in ours.encoder.state_dict().items())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hf_w2vbert_base_width_parity(attn):
    """Base widths (1024 dims, 16 heads, FFN 4096, kernel 31, positions [-64, 8]) with 2 of the 24
    layers to stay cheap on CPU; 2 s of audio (99 frames) exercises the position clipping."""
    transformers = pytest.importorskip("transformers")
    from sslseq.convert.hf import speech_encoder_from_hf

    defaults = transformers.Wav2Vec2BertConfig()
    assert (defaults.hidden_size, defaults.num_attention_heads, defaults.intermediate_size, defaults.conv_depthwise_kernel_size,
            defaults.left_max_position_embeddings, defaults.right_max_position_embeddings, defaults.hidden_act) == \
        (1024, 16, 4096, 31, 64, 8, "swish")
    hf = _hf_w2vbert(transformers, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                     conv_depthwise_kernel_size=31, left_max_position_embeddings=64, right_max_position_embeddings=8,
                     num_hidden_layers=2)
    ours = speech_encoder_from_hf(hf).eval()
    hf.set_attn_implementation(attn)
    wav, lens = audio_batch((32000, 20800))
    diffs = _parity(ours, hf, wav, lens)
    print(f"w2v-BERT base-width parity ({attn}), max abs diff per hidden state:", diffs)
    assert max(diffs) <= 1e-4, diffs


def test_hf_w2vbert_ctc(tmp_path):
    transformers = pytest.importorskip("transformers")
    from sslseq.convert import convert

    vocab = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A"]
    # Without masking transformers saves no masked_spec_embed: the import initialises one.
    hf = _hf_w2vbert(transformers, "Wav2Vec2BertForCTC", vocab_size=len(vocab), mask_time_prob=0.0)
    assert "wav2vec2_bert.masked_spec_embed" not in hf.state_dict()
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    convert(tmp_path / "hf", tmp_path / "exp", "hf")
    ours = load(tmp_path / "exp")
    assert isinstance(ours, CTCModel)
    assert (tmp_path / "exp" / "units.txt").read_text().split() == ["<blank>"] + vocab[1:]
    wav, lens = audio_batch()
    diffs = _parity(ours, hf, wav, lens)
    assert max(diffs) <= 1e-4, diffs
    with torch.no_grad():
        lp, frame_lens = ours.log_probs(wav, lens)
        feats = ours.encoder.feature_extractor(wav, lens).transpose(1, 2)
        att = (torch.arange(feats.shape[1])[None, :] < frame_lens[:, None]).long()
        ref = torch.log_softmax(hf(feats, attention_mask=att).logits, dim=-1)
    assert (lp - ref).abs().max().item() <= 1e-4


def test_hf_w2vbert_bad_input(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    from sslseq.convert import convert

    hf = _hf_w2vbert(transformers)
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(weights))
    # An unknown parameter: the error lists the key prefixes a Wav2Vec2BertModel has.
    save_file({**state, "encoder.pos_conv_embed.conv.weight": torch.zeros(3)}, str(weights))
    with pytest.raises(SslseqError, match="encoder.pos_conv_embed.conv.weight") as e:
        convert(tmp_path / "hf", tmp_path / "exp", "hf")
    for prefix in ("feature_projection.projection.", "encoder.layers.N.self_attn.linear_q.", "encoder.layers.N.conv_module."):
        assert prefix in str(e.value)
    # A config that disagrees with the weights: the parameter and both shapes are named.
    save_file(state, str(weights))
    cfg_path = tmp_path / "hf" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "intermediate_size": 64}))
    with pytest.raises(SslseqError, match=r"'encoder\.encoder\.layers\.0\.ffn1\.fc1\.weight' has shape \(96, 48\) in the weights but \(64, 48\)"):
        convert(tmp_path / "hf", tmp_path / "exp", "hf")
    cfg_path.write_text(json.dumps({**cfg, "position_embeddings_type": "rotary"}))
    with pytest.raises(SslseqError, match="position_embeddings_type='rotary'"):
        convert(tmp_path / "hf", tmp_path / "exp", "hf")
    assert not (tmp_path / "exp").exists()


def test_export_refuses_w2vbert(tmp_path):
    from sslseq.convert import export

    model = build_model(small_w2vbert())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(model)}))
    save_weights(model, tmp_path / "model.safetensors")
    with pytest.raises(SslseqError, match="fbank frontend and conformer layers"):
        export(tmp_path, tmp_path / "hf")


# ------------------------------------------------------------------ model


def test_w2vbert_forward_logs_and_loss():
    torch.manual_seed(0)
    model = build_model(small_w2vbert())
    assert isinstance(model, W2VBert) and model.needs_labels is False and model.frame_rate == 50.0
    assert model.cfg.encoder.mask_prob == 0.65 and model.num_contrastive_layers == 2
    # w2v-BERT defaults for the keys the config leaves out: fbank frontend, swish conformer.
    assert isinstance(model.encoder.encoder, ConformerEncoder) and model.encoder.cfg.frontend == "fbank"
    assert model.cfg.encoder.encoder.activation == "swish" and not hasattr(model.encoder.encoder, "pos_conv")
    out = model(wav_batch())
    n = out.sample_size
    assert torch.isfinite(out.loss) and n == out.logs["n_masked"] > 0
    assert set(out.logs) >= {"loss", "loss_bits", "contrastive", "contrastive_bits", "contrastive_chance_bits", "acc",
                             "mlm", "mlm_bits", "mlm_chance_bits", "mlm_acc", "chance_bits", "code_perplexity",
                             "code_perplexity_g0", "codebook_use", "prob_perplexity", "diversity", "temp", "n_masked"}
    assert out.logs["contrastive_chance_bits"] == pytest.approx(math.log2(11))
    assert out.logs["mlm_chance_bits"] == pytest.approx(math.log2(12))
    assert out.logs["chance_bits"] == pytest.approx(math.log2(11) + math.log2(12))
    assert out.logs["loss_bits"] == pytest.approx(out.logs["contrastive_bits"] + out.logs["mlm_bits"])
    assert out.logs["codebook_use"] == pytest.approx(out.logs["code_perplexity"] / 12)
    # Near chance at init on both tasks.
    assert abs(out.logs["contrastive_bits"] - math.log2(11)) < 0.35 * math.log2(11)
    assert abs(out.logs["mlm_bits"] - math.log2(12)) < 0.35 * math.log2(12)
    # loss = MLM + contrastive + 0.1 · diversity · n (each summed over the n masked frames).
    expect = (out.logs["mlm"] + out.logs["contrastive"] + 0.1 * out.logs["diversity"]) * n
    assert out.loss.item() == pytest.approx(expect, rel=1e-5)
    assert out.logs["diversity"] == pytest.approx((12 - out.logs["prob_perplexity"]) / 12, rel=1e-5)
    out.loss.backward()
    for p in (model.quantizer.vars, model.quantizer.weight_proj.weight, model.project_q.weight, model.final_proj.weight,
              model.mlm_proj.weight, model.encoder.mask_emb, model.encoder.post_extract_proj.weight,
              model.encoder.encoder.layers[-1].ffn2.fc1.weight, model.encoder.encoder.layers[0].self_attn.distance_embedding.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_mlm_targets_are_the_quantizer_codes_of_masked_frames(monkeypatch):
    from sslseq.models import w2vbert as w2vbert_mod
    from sslseq.nn import encoder as enc_mod

    torch.manual_seed(0)
    model = build_model(small_w2vbert(latent_groups=2, latent_vars=6)).eval()  # eval: argmax codes, no dropout
    b = wav_batch()
    frame_lens = model.encoder.output_lengths(b["wav_lens"])
    B, T = len(frame_lens), int(frame_lens.max())
    pad = torch.arange(T)[None, :] >= frame_lens[:, None]
    mask = (torch.rand(B, T, generator=torch.Generator().manual_seed(1)) < 0.5) & ~pad
    mask[0, int(frame_lens[0]) - 1] = True
    monkeypatch.setattr(enc_mod, "compute_mask_indices", lambda *a, **k: mask.clone())
    seen = {}
    real_ce = w2vbert_mod.F.cross_entropy

    def spy(logits, targets, **kw):
        seen["logits"], seen["targets"] = logits, targets
        return real_ce(logits, targets, **kw)

    monkeypatch.setattr(w2vbert_mod.F, "cross_entropy", spy)
    out = model(b)
    n = int(mask.sum())
    assert out.sample_size == n and seen["logits"].shape == (n * 2, 6)
    # The codes the quantizer picks from the unmasked features, at masked frames only, row-major.
    with torch.no_grad():
        feats = model.encoder(b["wav"], b["wav_lens"], return_features=True).features
        codes = model.quantizer.weight_proj(feats[mask]).view(n, 2, 6).argmax(-1)
    assert torch.equal(seen["targets"], codes.reshape(-1)) and not seen["targets"].requires_grad
    assert out.logs["mlm_acc"] == pytest.approx(float((seen["logits"].argmax(-1) == codes.reshape(-1)).float().mean()))


def test_codebook_learns_through_contrastive_targets():
    grads = {}
    for mlm_weight in (0.0, 1.0):
        torch.manual_seed(0)  # same initial weights
        model = build_model(small_w2vbert(mlm_weight=mlm_weight, diversity_weight=0.0))
        torch.manual_seed(1)  # same masks, negatives and Gumbel noise
        model(wav_batch()).loss.backward()
        grads[mlm_weight] = (model.quantizer.vars.grad.clone(), model.quantizer.weight_proj.weight.grad.clone())
        if mlm_weight:
            assert model.mlm_proj.weight.grad.abs().sum() > 0
    vars0, proj0 = grads[0.0]
    assert vars0.abs().sum() > 0 and proj0.abs().sum() > 0  # the contrastive targets train the codebook
    # The MLM's targets are detached code ids: adding the MLM loss leaves the quantizer's gradient unchanged.
    assert torch.allclose(grads[1.0][0], vars0) and torch.allclose(grads[1.0][1], proj0)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(small_w2vbert())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    b = wav_batch()
    losses = []
    for step in range(12):
        torch.manual_seed(123)  # same masks, negatives and Gumbel noise every step
        out = model(b)
        opt.zero_grad()
        (out.loss / out.sample_size).backward()
        opt.step()
        losses.append(out.logs["loss"])
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_config_errors():
    with pytest.raises(SslseqError, match=r"num_mlm_layers must be in \[1, 2\]"):
        build_model(small_w2vbert(num_mlm_layers=3))
    with pytest.raises(SslseqError, match="layer_type must be 'transformer' or 'conformer'"):
        cfg = small_w2vbert()
        cfg["encoder"]["encoder"]["layer_type"] = "lstm"
        build_model(cfg)
    with pytest.raises(SslseqError, match="frontend must be 'conv', 'fbank' or 'fbank_conv', got 'mfcc'"):
        build_model(small_w2vbert(encoder={**small_w2vbert()["encoder"], "frontend": "mfcc"}))
    with pytest.raises(SslseqError, match="Did you mean: num_mlm_layers"):
        build_model(small_w2vbert(num_mlm_layer=1))


def test_load_round_trip_extract_features_ctc_and_layer_dump(tmp_path):
    from test_features import make_data_dir

    from sslseq.features import dump
    from sslseq.features.store import FeatureStore

    torch.manual_seed(0)
    model = build_model(small_w2vbert())
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(model)}))
    save_weights(model, exp / "model.safetensors")
    loaded = load(exp)
    assert isinstance(loaded, W2VBert) and loaded.cfg == model.cfg
    wav, lens = audio_batch()
    hs, frame_lens = loaded.extract_features(wav, lens)
    assert frame_lens.tolist() == [49, 34, 21] and len(hs) == 4
    assert all(h.shape == (3, 49, 48) for h in hs)
    h0, _ = model.extract_features(wav, lens)
    assert all(torch.equal(a, b) for a, b in zip(h0, hs))
    ctc = CTCModel.from_pretrained(loaded, {"name": "ctc", "vocab_size": 12})
    assert isinstance(ctc.encoder.encoder, ConformerEncoder) and ctc.frame_rate == 50.0
    assert all(torch.equal(v, ctc.encoder.state_dict()[k]) for k, v in loaded.encoder.state_dict().items())
    with pytest.raises(SslseqError, match="architecture"):
        CTCModel.from_pretrained(loaded, {"vocab_size": 12, "encoder": {"stack_frames": 3}})
    # Stage 5's layer features work the same way as for the other families.
    data = make_data_dir(tmp_path, {"a-1": 8000, "a-2": 16000, "b-1": 9000})
    lf = LayerFeatures(exp, 2, torch.device("cpu"))
    dump.dump_features(data, tmp_path / "f", feat_type="layer", layer_features=lf)
    fs = FeatureStore(tmp_path / "f")
    assert fs.dim == 48 and fs.frame_rate == 50.0 and fs.lengths.tolist() == [24, 49, 27]


def test_tiny_and_base_yaml_build():
    transformers = pytest.importorskip("transformers")
    tiny = yaml.safe_load((CONF / "model_w2vbert_tiny.yaml").read_text())
    w2v = yaml.safe_load((CONF / "model_wav2vec2_tiny.yaml").read_text())
    sizes = ("embed_dim", "ffn_dim", "num_layers", "num_heads")
    assert {k: tiny["encoder"]["encoder"][k] for k in sizes} == {k: w2v["encoder"]["encoder"][k] for k in sizes}
    m = build_model(tiny)
    assert m.frame_rate == 50.0 and sum(p.numel() for p in m.parameters()) < 7e6
    base = yaml.safe_load((CONF / "model_w2vbert_base.yaml").read_text())
    with torch.device("meta"):  # shapes only
        mb = build_model(base)
        hf = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig())
    # The encoder is transformers' default Wav2Vec2BertModel parameter for parameter (580.5M).
    n_ours = sum(p.numel() for p in mb.encoder.parameters())
    assert n_ours == sum(p.numel() for p in hf.parameters()) == 580_493_120
    assert mb.num_contrastive_layers == 8 and mb.quantizer.vars.shape == (1, 1024, 1024)
    pre = yaml.safe_load((CONF / "pretrain_w2vbert_tiny.yaml").read_text())
    pre_w2v = yaml.safe_load((CONF / "pretrain_wav2vec2_tiny.yaml").read_text())
    assert pre["optim"] == pre_w2v["optim"] and pre["data"] == pre_w2v["data"]


# ------------------------------------------------------------------ trainer


def test_w2vbert_then_ctc_on_tiny_corpus(tmp_path, tiny_data):
    from sslseq.train.config import load_train_config
    from sslseq.train.trainer import train_from_config

    over = [f"out_dir={tmp_path / 'x'}", "data.train=data/train", "data.valid=data/dev"]
    assert load_train_config(CONF / "pretrain_w2vbert_tiny.yaml", over).data.labels_train is None

    small = ["data.max_batch_seconds=8", "max_valid_batches=1", "save_interval=1", "log_interval=1"]
    pre = train_from_config(
        CONF / "pretrain_w2vbert_tiny.yaml",
        [f"out_dir={tmp_path / 'pre'}", f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}",
         "optim.max_steps=2", "optim.update_freq=2", "data.max_sample_seconds=2", *small],
    )
    ssl = load(pre)
    assert isinstance(ssl, W2VBert)
    rec = [json.loads(line) for line in (pre / "log" / "train.jsonl").read_text().splitlines()]
    train = [r for r in rec if "loss" in r]
    assert [r["step"] for r in train] == [1, 2] and all(math.isfinite(r["loss"]) for r in train)
    assert all(r["n_masked"] > 0 and "mlm_acc" in r and "code_perplexity_g0" in r for r in train)
    assert [r["temp"] for r in train] == pytest.approx([2.0, 2.0 * 0.995])
    assert math.isfinite([r for r in rec if "valid_loss" in r][-1]["valid_loss"])

    ctc_over = [f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}", "optim.max_steps=2",
                "model.freeze_encoder_steps=1", "data.max_sample_seconds=8", *small]
    ft = train_from_config(CONF / "ctc_w2vbert_tiny.yaml", [f"out_dir={tmp_path / 'ctc'}", f"init={pre}", *ctc_over])
    ctc = load(ft)
    assert isinstance(ctc, CTCModel) and isinstance(ctc.encoder.encoder, ConformerEncoder)
    ws, cs = ssl.state_dict(), ctc.state_dict()
    assert cs["encoder.layer_norm.weight"].shape == (160,)
    assert any(not torch.equal(cs[k], ws[k]) for k in cs if k.startswith("encoder.encoder.layers."))
    scratch = train_from_config(CONF / "ctc_w2vbert_tiny.yaml", [f"out_dir={tmp_path / 'scratch'}", "init=none", *ctc_over])
    assert isinstance(load(scratch).encoder.encoder, ConformerEncoder)


def test_codebook_collapse_reaches_the_trainer_health_check():
    from sslseq.train.health import HealthMonitor

    torch.manual_seed(0)
    model = build_model(small_w2vbert())
    with torch.no_grad():  # every frame picks code 0: perplexity 1 of at most 12
        model.quantizer.weight_proj.weight.zero_()
        model.quantizer.weight_proj.bias.zero_()
        model.quantizer.weight_proj.bias[0] = 100.0
    out = model(wav_batch())
    assert out.logs["codebook_use"] == pytest.approx(1 / 12, abs=1e-3)
    warnings = HealthMonitor().check(1, out.logs)
    assert len(warnings) == 1 and "collapsing" in warnings[0]
