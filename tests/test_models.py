"""HuBERT, CTC and the registry on a very small configuration (fast on CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from sslseq.models import CTCModel, HuBERT, build_model, load, model_config_dict, save_weights
from sslseq.utils import SslseqError

SR = 16000
CONV = [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2


def small_encoder(**over):
    enc = {
        "conv_layers": CONV,
        "dropout_input": 0.0,
        "dropout_features": 0.0,
        "encoder": {"embed_dim": 48, "ffn_dim": 96, "num_layers": 2, "num_heads": 4, "conv_pos": 16,
                    "conv_pos_groups": 4, "dropout": 0.0, "attention_dropout": 0.0, "layerdrop": 0.0},
    }
    enc.update(over)
    return enc


def hubert_cfg(**over):
    cfg = {"name": "hubert", "num_classes": 20, "final_dim": 16, "encoder": small_encoder()}
    cfg.update(over)
    return cfg


def batch(lens_sec=(1.0, 0.7, 0.45), K=20, label_rate=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([int(s * SR) for s in lens_sec])
    wav = torch.randn(len(lens), int(lens.max()), generator=g) * 0.1
    wav = wav * (torch.arange(wav.size(1))[None, :] < lens[:, None])
    hop = SR // label_rate
    label_lens = (lens - 400) // hop + 1  # MFCC-style: 25 ms window
    labels = torch.randint(0, K, (len(lens), int(label_lens.max())), generator=g)
    labels = labels.masked_fill(torch.arange(labels.size(1))[None, :] >= label_lens[:, None], -1)
    return {"wav": wav, "wav_lens": lens, "labels": labels, "label_lens": label_lens}


# ------------------------------------------------------------------ HuBERT


def test_hubert_forward_backward_padded():
    torch.manual_seed(0)
    model = build_model(hubert_cfg())
    out = model(batch())
    assert torch.isfinite(out.loss) and out.sample_size > 0
    assert out.logs["n_masked"] == out.sample_size
    assert set(out.logs) >= {"loss_m", "loss_m_bits", "chance_bits", "acc_m", "n_masked", "features_pen"}
    out.loss.backward()
    conv_grad = model.encoder.feature_extractor.conv_layers[0].conv.weight.grad
    assert conv_grad is not None and conv_grad.abs().sum() > 0
    assert model.label_embs_concat.grad.abs().sum() > 0 and model.encoder.mask_emb.grad.abs().sum() > 0


def test_feature_grad_mult_scales_frontend_gradient():
    grads = {}
    for mult in (1.0, 0.1):
        torch.manual_seed(0)
        model = build_model(hubert_cfg(encoder=small_encoder(feature_grad_mult=mult)))
        torch.manual_seed(1)  # same masks for both runs
        model(batch()).loss.backward()
        grads[mult] = model.encoder.feature_extractor.conv_layers[1].conv.weight.grad.clone()
        head = model.final_proj.weight.grad.clone()
        grads[f"head{mult}"] = head
    assert torch.allclose(grads[0.1], 0.1 * grads[1.0], rtol=1e-3, atol=1e-5)
    assert torch.allclose(grads["head0.1"], grads["head1.0"], rtol=1e-5, atol=1e-8)


def test_initial_loss_near_chance():
    torch.manual_seed(0)
    K = 50
    model = build_model(hubert_cfg(num_classes=K))
    out = model(batch(K=K))
    assert abs(out.logs["loss_m"] - math.log(K)) < 0.25 * math.log(K)
    assert out.logs["chance_bits"] == pytest.approx(math.log2(K))


def test_padding_does_not_change_valid_frames():
    torch.manual_seed(0)
    model = build_model(hubert_cfg()).eval()
    b = batch()
    hs, lens = model.extract_features(b["wav"], b["wav_lens"])
    assert len(hs) == 3 and lens.tolist() == model.encoder.output_lengths(b["wav_lens"]).tolist()
    for i in range(3):
        n = int(b["wav_lens"][i])
        hs1, lens1 = model.extract_features(b["wav"][i : i + 1, :n], b["wav_lens"][i : i + 1])
        T = int(lens1[0])
        assert T == int(lens[i])
        for h, h1 in zip(hs, hs1):
            assert torch.allclose(h[i, :T], h1[0, :T], atol=1e-5), (i, (h[i, :T] - h1[0, :T]).abs().max())


def test_frame_rate_and_lengths():
    model = build_model(hubert_cfg())
    assert model.frame_rate == 50.0
    assert model.encoder.output_lengths(torch.tensor([16000, 400, 719, 720])).tolist() == [49, 1, 1, 2]


def test_label_alignment():
    model = build_model(hubert_cfg())
    labels = torch.arange(30).repeat(2, 1)
    label_lens = torch.tensor([30, 21])
    frame_lens = torch.tensor([15, 15])
    t = model.align_labels(labels, label_lens, frame_lens, T=16)
    assert t[0, :15].tolist() == list(range(0, 30, 2)) and t[0, 15] == -1  # beyond the audio
    assert t[1, :11].tolist() == list(range(0, 22, 2)) and (t[1, 11:] == -1).all()  # beyond the labels
    model50 = build_model(hubert_cfg(label_rate=50.0))
    assert model50.align_labels(labels, label_lens, frame_lens, T=15)[0].tolist() == list(range(15))
    with pytest.raises(SslseqError, match="75 Hz.*50 Hz"):
        build_model(hubert_cfg(label_rate=75.0))
    with pytest.raises(SslseqError, match="set model.label_rate"):
        build_model(hubert_cfg(label_rate=25.0))  # labels coarser than the frames


def test_labels_inconsistent_with_audio_are_errors():
    model = build_model(hubert_cfg())
    b = batch(label_rate=50)  # 50 Hz labels given to a 100 Hz model: half as many as expected
    with pytest.raises(SslseqError, match="utterance 0"):
        model(b)
    b = batch()
    b["labels"][1, 3] = 20  # == num_classes
    with pytest.raises(SslseqError, match="outside"):
        model(b)


def test_nomask_prediction_weight():
    torch.manual_seed(0)
    model = build_model(hubert_cfg(pred_nomask_weight=1.0))
    out = model(batch())
    assert out.sample_size == out.logs["n_masked"] + out.logs["n_unmasked"]
    n_frames = int(model.encoder.output_lengths(batch()["wav_lens"]).sum())
    assert n_frames - 3 <= out.sample_size <= n_frames


# ------------------------------------------------------------------ registry


def test_build_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(hubert_cfg())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(model), "optim": {"lr": 1}}))
    save_weights(model, tmp_path / "model.safetensors")
    loaded = load(tmp_path)
    assert isinstance(loaded, HuBERT) and not loaded.training
    b = batch()
    h0, _ = model.extract_features(b["wav"], b["wav_lens"])
    h1, _ = loaded.extract_features(b["wav"], b["wav_lens"])
    assert all(torch.equal(x, y) for x, y in zip(h0, h1))


def test_load_errors(tmp_path):
    model = build_model(hubert_cfg())
    save_weights(model, tmp_path / "model.safetensors")
    # Config with a different width: shape mismatch names the parameter and both shapes.
    wider = hubert_cfg(final_dim=8)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": wider}))
    with pytest.raises(SslseqError, match=r"final_proj.weight.*\(16, 48\).*\(8, 48\)"):
        load(tmp_path)
    deeper = hubert_cfg(encoder=small_encoder(encoder={**small_encoder()["encoder"], "num_layers": 3}))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": deeper}))
    with pytest.raises(SslseqError, match="missing parameters: encoder.encoder.layers.2"):
        load(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": hubert_cfg()}))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(SslseqError, match="not found"):
        load(tmp_path)


def test_a_damaged_model_is_named_by_its_record(tmp_path):
    """write_exp_dir records the weights' size and SHA-256 in config.yaml; load checks both."""
    from sslseq.models import write_exp_dir

    model = build_model(hubert_cfg())
    write_exp_dir(tmp_path, model, {"optim": {"lr": 1}})
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    record = yaml.safe_load((tmp_path / "config.yaml").read_text())["files"]["model.safetensors"]
    assert record["bytes"] == len(good) and len(record["sha256"]) == 64
    load(tmp_path)
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(SslseqError, match=rf"{weights}: {len(good) // 2} bytes, but {len(good)} were written .*"
                                          "train \\(or convert\\) it again"):
        load(tmp_path)
    flipped = bytearray(good)
    flipped[-1] ^= 1  # the last byte of the last tensor: safetensors itself would load it
    weights.write_bytes(bytes(flipped))
    with pytest.raises(SslseqError, match=f"{weights}: its SHA-256 differs"):
        load(tmp_path)
    weights.write_bytes(good)
    load(tmp_path)


def test_config_errors():
    with pytest.raises(SslseqError, match="known models: hubert, ctc"):
        build_model({"name": "hubret"})
    with pytest.raises(SslseqError, match="Did you mean: logit_temp"):
        build_model(hubert_cfg(logit_tmp=0.1))
    with pytest.raises(SslseqError, match="mask_prob"):
        build_model(hubert_cfg(encoder=small_encoder(mask_prb=0.5)))
    with pytest.raises(SslseqError, match="num_classes"):
        build_model({"name": "hubert"})


def test_tiny_and_base_yaml_build():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "recipes" / "conf"
    tiny = yaml.safe_load((conf / "model_hubert_tiny.yaml").read_text())
    base = yaml.safe_load((conf / "model_hubert_base.yaml").read_text())
    m = build_model({**tiny, "num_classes": 100})
    assert m.frame_rate == 50.0 and sum(p.numel() for p in m.parameters()) < 6e6
    with torch.device("meta"):  # shapes only: Base has 95M parameters
        mb = build_model({**base, "num_classes": 504})
    n = sum(p.numel() for p in mb.parameters())
    assert 94.0e6 < n < 95.5e6, n


# ------------------------------------------------------------------ CTC


def ctc_cfg(**over):
    cfg = {"name": "ctc", "vocab_size": 12, "encoder": small_encoder(), "freeze_encoder_steps": 5,
           "mask_prob": 0.3, "mask_channel_prob": 0.1, "mask_channel_length": 8, "layerdrop": 0.0,
           "activation_dropout": 0.0}
    cfg.update(over)
    return cfg


def ctc_batch(seed=0):
    b = batch(seed=seed)
    g = torch.Generator().manual_seed(seed)
    target_lens = torch.tensor([9, 5, 3])
    targets = torch.randint(1, 12, (3, 9), generator=g)
    targets = targets.masked_fill(torch.arange(9)[None, :] >= target_lens[:, None], -1)
    return {"wav": b["wav"], "wav_lens": b["wav_lens"], "targets": targets, "target_lens": target_lens}


def test_ctc_loss_matches_recomputed():
    torch.manual_seed(0)
    model = build_model(ctc_cfg()).eval()
    b = ctc_batch()
    out = model(b)
    lp, lens = model.log_probs(b["wav"], b["wav_lens"])
    assert lp.dtype == torch.float32 and lp.shape[:2] == (3, int(lens.max()))
    ref = F.ctc_loss(lp.transpose(0, 1), b["targets"].clamp(min=0), lens, b["target_lens"], reduction="sum")
    assert torch.allclose(out.loss, ref, rtol=1e-5)
    assert out.sample_size == 17 and out.logs["n_utts"] == 3
    assert out.logs["loss"] == pytest.approx(ref.item() / 17, rel=1e-5)


def test_ctc_freeze_schedule():
    torch.manual_seed(0)
    model = build_model(ctc_cfg(feature_grad_mult=0.0))
    model.train()
    b = ctc_batch()
    model.set_num_updates(0)
    model(b).loss.backward()
    assert model.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)
    model.set_num_updates(5)
    model(b).loss.backward()
    assert model.encoder.encoder.layers[0].fc1.weight.grad.abs().sum() > 0
    assert model.encoder.post_extract_proj.weight.grad.abs().sum() > 0
    # feature_grad_mult = 0: the conv frontend stays frozen during fine-tuning.
    assert all(p.grad is None for p in model.encoder.feature_extractor.parameters())


def test_ctc_upsample_splits_each_frame_in_time():
    torch.manual_seed(0)
    base = build_model(ctc_cfg()).eval()
    up = build_model(ctc_cfg(upsample=2)).eval()
    up.encoder.load_state_dict(base.encoder.state_dict())
    b = ctc_batch()
    lp1, lens1 = base.log_probs(b["wav"], b["wav_lens"])
    lp2, lens2 = up.log_probs(b["wav"], b["wav_lens"])
    assert up.frame_rate == 2 * base.frame_rate
    assert torch.equal(lens2, 2 * lens1) and lp2.shape[1] == 2 * lp1.shape[1]
    # output 2t+j of frame t is the softmax of rows j*V .. (j+1)*V-1 of the head
    with torch.no_grad():
        h = up.encoder(b["wav"], b["wav_lens"], mask=False).x
        V = up.cfg.vocab_size
        for j in range(2):
            ref = F.log_softmax(F.linear(h, up.proj.weight[j * V:(j + 1) * V], up.proj.bias[j * V:(j + 1) * V]).float(), -1)
            assert torch.allclose(lp2[:, j::2], ref, atol=1e-5)
    out = up.train()(b)
    assert torch.isfinite(out.loss)
    with pytest.raises(SslseqError, match="upsample"):
        build_model(ctc_cfg(upsample=0))


def test_ctc_invalid_targets():
    model = build_model(ctc_cfg())
    b = ctc_batch()
    b["targets"][0, 0] = 0  # blank
    with pytest.raises(SslseqError, match="blank_id"):
        model(b)


def test_from_pretrained_copies_encoder(tmp_path):
    torch.manual_seed(0)
    ssl = build_model(hubert_cfg())
    ctc = CTCModel.from_pretrained(ssl, {"name": "ctc", "vocab_size": 12, "mask_prob": 0.5})
    ssl_sd, ctc_sd = ssl.encoder.state_dict(), ctc.encoder.state_dict()
    assert ssl_sd.keys() == ctc_sd.keys()
    assert all(torch.equal(ssl_sd[k], ctc_sd[k]) for k in ssl_sd)
    assert ctc.cfg.encoder.mask_prob == 0.5 and ctc.cfg.encoder.feature_grad_mult == 0.0
    assert ctc.cfg.encoder.encoder.embed_dim == 48 and ctc.proj.out_features == 12
    # Architecture changes are refused; fine-tuning fields belong at the top level.
    with pytest.raises(SslseqError, match="architecture"):
        CTCModel.from_pretrained(ssl, {"vocab_size": 12, "encoder": {"encoder": {"num_layers": 3}}})
    with pytest.raises(SslseqError, match="model.mask_prob"):
        CTCModel.from_pretrained(ssl, {"vocab_size": 12, "encoder": {"mask_prob": 0.1}})
    # The saved CTC config rebuilds the same architecture.
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(ctc)}))
    save_weights(ctc, tmp_path / "model.safetensors")
    loaded = load(tmp_path)
    b = ctc_batch()
    assert torch.equal(loaded.log_probs(b["wav"], b["wav_lens"])[0], ctc.eval().log_probs(b["wav"], b["wav_lens"])[0])


# ------------------------------------------------------------------ transformers parity


@pytest.mark.parametrize("norm,stable", [("layer", False), ("group", False), ("layer", True)])
def test_hf_hubert_parity(norm, stable):
    transformers = pytest.importorskip("transformers")
    from sslseq.convert.hf import speech_encoder_from_hf

    torch.manual_seed(0)
    hf_cfg = transformers.HubertConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm, conv_bias=norm == "layer", do_stable_layer_norm=stable,
    )
    hf = transformers.HubertModel(hf_cfg).eval()
    ours = speech_encoder_from_hf(hf)
    b = batch()
    wav, lens = b["wav"], b["wav_lens"]
    hs, frame_lens = ours.extract_features(wav, lens)
    assert len(hs) == hf_cfg.num_hidden_layers + 1
    with torch.no_grad():
        if norm == "layer":  # padding-safe frontend: compare on the padded batch directly
            att = (torch.arange(wav.size(1))[None, :] < lens[:, None]).long()
            hf_out = hf(wav, attention_mask=att, output_hidden_states=True)
            ref = [hf_out.hidden_states]
            x = ours.eval()(wav, lens).x
            for i in range(len(lens)):
                T = int(frame_lens[i])
                assert (x[i, :T] - hf_out.last_hidden_state[i, :T]).abs().max() <= 1e-4
            rows = [(i, 0) for i in range(len(lens))]
        else:  # transformers' GroupNorm sees padding; ours must equal it run one utterance at a time
            ref = [hf(wav[i : i + 1, : int(lens[i])], output_hidden_states=True).hidden_states for i in range(len(lens))]
            rows = [(i, i) for i in range(len(lens))]
    for i, r in rows:
        T = int(frame_lens[i])
        ref_h = ref[r] if norm == "group" else ref[0]
        j = 0 if norm == "group" else i
        for layer, (h, h_ref) in enumerate(zip(hs, ref_h)):
            diff = (h[i, :T] - h_ref[j, :T]).abs().max().item()
            assert diff <= 1e-4, (i, layer, diff)
