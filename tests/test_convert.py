"""Checkpoint interop: transformers / fairseq / fairseq2 → sslseq exp dirs, sslseq → transformers.

Reference outputs come from random-init transformers models on tiny configs; fairseq and
fairseq2 checkpoints are made by renaming such a model's weights to those layouts' key names.
"""

import argparse
import json
import re

import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers")

from sslseq.cli import main as cli_main  # noqa: E402
from sslseq.convert import convert, export, write_exp  # noqa: E402
from sslseq.models import CTCModel, HuBERT, build_model, load  # noqa: E402
from sslseq.utils import SslseqError  # noqa: E402

SR = 16000
CONV_SPEC = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N"]

torch.set_num_threads(1)


def tiny_hf(cls_name, norm="group", stable=False, heads=4, **over):
    family = "Hubert" if cls_name.startswith("Hubert") else "Wav2Vec2"
    cfg = getattr(transformers, f"{family}Config")(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=heads, intermediate_size=96,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm, conv_bias=norm == "layer", do_stable_layer_norm=stable,
        vocab_size=len(VOCAB), **over,
    )
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():  # transformers zero-inits biases / unit-inits norms: randomise them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def wav_batch(lens_sec=(0.5, 0.33, 0.21), seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([int(s * SR) for s in lens_sec])
    wav = torch.randn(len(lens), int(lens.max()), generator=g) * 0.1
    return wav * (torch.arange(wav.size(1))[None, :] < lens[:, None]), lens


def hf_outputs(hf, wav, lens, group_norm):
    """Per utterance: (hidden states, last hidden state, logits or None) over its valid frames."""
    base = getattr(hf, "hubert", None) or getattr(hf, "wav2vec2", None) or hf
    rows = []
    with torch.no_grad():
        if group_norm:  # transformers' GroupNorm sees padding: run one utterance at a time
            outs = [base(wav[i : i + 1, : int(lens[i])], output_hidden_states=True) for i in range(len(lens))]
            idx = [(o, 0) for o in outs]
        else:
            att = (torch.arange(wav.size(1))[None, :] < lens[:, None]).long()
            out = base(wav, attention_mask=att, output_hidden_states=True)
            idx = [(out, i) for i in range(len(lens))]
        for o, j in idx:
            logits = hf.lm_head(o.last_hidden_state)[j] if hasattr(hf, "lm_head") else None
            rows.append(([h[j] for h in o.hidden_states], o.last_hidden_state[j], logits))
    return rows


def assert_matches_hf(ours, hf, group_norm, perm=None, tol=1e-4):
    wav, lens = wav_batch()
    ref = hf_outputs(hf, wav, lens, group_norm)
    with torch.no_grad():
        hs, frame_lens = ours.extract_features(wav, lens)
        out = ours.encoder(wav, lens)
        logits = ours.proj(out.x) if isinstance(ours, CTCModel) else None
    assert len(hs) == len(ref[0][0])
    for i, (ref_hs, ref_last, ref_logits) in enumerate(ref):
        T = int(frame_lens[i])
        for layer, (h, r) in enumerate(zip(hs, ref_hs)):
            assert (h[i, :T] - r[:T]).abs().max().item() <= tol, (i, layer)
        assert (out.x[i, :T] - ref_last[:T]).abs().max().item() <= tol
        if logits is not None:
            r = ref_logits[:, perm] if perm is not None else ref_logits
            assert (logits[i, :T] - r[:T]).abs().max().item() <= tol


# ------------------------------------------------------------------ from transformers


@pytest.mark.parametrize(
    "cls_name,norm,stable",
    [
        ("HubertModel", "group", False),
        ("HubertForCTC", "layer", True),
        ("Wav2Vec2Model", "layer", False),
        ("Wav2Vec2ForCTC", "group", False),
        ("Wav2Vec2ForPreTraining", "layer", True),
    ],
)
def test_from_hf(tmp_path, cls_name, norm, stable):
    hf = tiny_hf(cls_name, norm, stable)
    hf.save_pretrained(tmp_path / "hf")
    ctc = cls_name.endswith("ForCTC")
    if ctc:
        (tmp_path / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    convert(tmp_path / "hf", tmp_path / "exp", "hf")
    ours = load(tmp_path / "exp")
    expected = {"ForCTC": "CTCModel", "ForPreTraining": "Wav2Vec2"}.get(re.sub(r"^(Hubert|Wav2Vec2)", "", cls_name), "EncoderOnly")
    assert type(ours).__name__ == expected
    assert_matches_hf(ours, hf, group_norm=norm == "group")
    cfg = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    assert cfg["model"]["name"] == {"CTCModel": "ctc", "Wav2Vec2": "wav2vec2"}.get(expected, "encoder")
    assert cfg["converted_from"]["architecture"] == cls_name
    if ctc:
        assert (tmp_path / "exp" / "units.txt").read_text().split() == ["<blank>"] + VOCAB[1:]
    if cls_name == "Wav2Vec2ForPreTraining":  # the contrastive head comes along
        assert torch.equal(ours.quantizer.vars, hf.quantizer.codevectors)
        assert torch.equal(ours.final_proj.weight, hf.project_hid.weight)
        assert torch.equal(ours.project_q.bias, hf.project_q.bias)
        assert ours.cfg.latent_groups == hf.config.num_codevector_groups
        assert ours.cfg.latent_vars == hf.config.num_codevectors_per_group
    # Stage 6 starts from it: a new CTC model takes over the encoder.
    ft = CTCModel.from_pretrained(ours, {"vocab_size": 5})
    for k, v in ours.encoder.state_dict().items():
        assert torch.equal(ft.encoder.state_dict()[k], v), k


def test_from_hf_blank_not_first(tmp_path):
    """transformers' blank is pad_token_id; ours is id 0, so the head's rows are reordered."""
    hf = tiny_hf("Wav2Vec2ForCTC", "layer", pad_token_id=2)
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    cli_rc = cli_main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "exp")])
    assert cli_rc == 0
    perm = [2, 0, 1] + list(range(3, len(VOCAB)))
    units = (tmp_path / "exp" / "units.txt").read_text().split()
    assert units == ["<blank>"] + [VOCAB[i] for i in perm[1:]]
    assert_matches_hf(load(tmp_path / "exp"), hf, group_norm=False, perm=perm)


def test_from_hf_without_vocab_numbers_units(tmp_path):
    hf = tiny_hf("HubertForCTC", "layer")
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "exp", "hf")
    assert (tmp_path / "exp" / "units.txt").read_text().split() == ["<blank>"] + [f"<unit{i}>" for i in range(1, len(VOCAB))]


# ------------------------------------------------------------------ fairseq / fairseq2 layouts


def hf_to_fairseq(hf, norm, new_weight_norm=False):
    """A fairseq-layout state dict (wav2vec2.py / hubert.py names) with the HF model's weights."""
    base = getattr(hf, "hubert", None) or getattr(hf, "wav2vec2", None) or hf
    out = {}
    for k, v in base.state_dict().items():
        k = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0.", k)
        if norm == "group":
            k = k.replace("feature_extractor.conv_layers.0.layer_norm.", "feature_extractor.conv_layers.0.2.")
        k = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.", r"feature_extractor.conv_layers.\1.2.1.", k)
        k = k.replace("feature_projection.layer_norm.", "layer_norm.").replace("feature_projection.projection.", "post_extract_proj.")
        k = k.replace("masked_spec_embed", "mask_emb")
        wn = ("parametrizations.weight.original0", "parametrizations.weight.original1") if new_weight_norm else ("weight_g", "weight_v")
        k = k.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original0", f"encoder.pos_conv.0.{wn[0]}")
        k = k.replace("encoder.pos_conv_embed.conv.parametrizations.weight.original1", f"encoder.pos_conv.0.{wn[1]}")
        k = k.replace("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias")
        k = re.sub(r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn.", k)
        k = re.sub(r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm.", k)
        k = k.replace("feed_forward.intermediate_dense.", "fc1.").replace("feed_forward.output_dense.", "fc2.")
        out[k] = v.clone()
    return out


def hf_to_fairseq2(hf, stable):
    """A fairseq2-layout wav2vec2 state dict with the HF model's weights."""
    out = {}
    for k, v in hf_to_fairseq(hf, hf.config.feat_extract_norm).items():
        k = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"encoder_frontend.feature_extractor.layers.\1.conv.", k)
        k = re.sub(r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"encoder_frontend.feature_extractor.layers.\1.layer_norm.", k)
        k = re.sub(r"^feature_extractor\.conv_layers\.0\.2\.", "encoder_frontend.feature_extractor.layers.0.group_norm.", k)
        k = re.sub(r"^layer_norm\.", "encoder_frontend.post_extract_layer_norm.", k)
        k = k.replace("post_extract_proj.", "encoder_frontend.model_dim_proj.").replace("mask_emb", "masker.temporal_mask_embed")
        k = k.replace("encoder.pos_conv.0.", "encoder_frontend.pos_encoder.conv.")
        if not stable:
            k = k.replace("encoder.layer_norm.", "encoder_frontend.layer_norm.")
        k = k.replace("self_attn.out_proj.", "self_attn.output_proj.").replace("fc1.", "ffn.inner_proj.")
        k = k.replace("fc2.", "ffn.output_proj.").replace("final_layer_norm.", "ffn_layer_norm.")
        out[k] = v
    return out


def fairseq_model_cfg(name, norm, stable, heads=4, **over):
    cfg = {
        "_name": name, "extractor_mode": "default" if norm == "group" else "layer_norm", "encoder_layers": 2,
        "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 96, "encoder_attention_heads": heads,
        "activation_fn": "gelu", "layer_norm_first": stable, "conv_feature_layers": CONV_SPEC,
        "conv_bias": norm == "layer", "conv_pos": 16, "conv_pos_groups": 4, "final_dim": 16, "dropout": 0.1,
    }
    cfg.update(over)
    return cfg


def test_fairseq_hubert_pretrained(tmp_path):
    """HuBERT + prediction head, dict cfg with an interpolated label rate, old weight norm."""
    hf = tiny_hf("HubertModel", "group")
    sd = hf_to_fairseq(hf, "group")
    assert "encoder.pos_conv.0.weight_g" in sd
    sd["label_embs_concat"] = torch.randn(20, 16)
    sd["final_proj.weight"], sd["final_proj.bias"] = torch.randn(16, 48), torch.randn(16)
    cfg = {"model": fairseq_model_cfg("hubert", "group", False, label_rate="${task.label_rate}", logit_temp=0.2),
           "task": {"label_rate": 100.0}}
    torch.save({"model": sd, "cfg": cfg}, tmp_path / "hubert.pt")
    convert(tmp_path / "hubert.pt", tmp_path / "exp", "fairseq")
    ours = load(tmp_path / "exp")
    assert isinstance(ours, HuBERT)
    assert ours.cfg.label_rate == 100.0 and ours.cfg.logit_temp == 0.2 and ours.cfg.num_classes == 20
    assert torch.equal(ours.label_embs_concat, sd["label_embs_concat"])
    assert torch.equal(ours.final_proj.weight, sd["final_proj.weight"])
    assert_matches_hf(ours, hf, group_norm=True)
    assert yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())["converted_from"]["config"] == "checkpoint cfg"


def test_fairseq_finetuned_ctc_inferred_architecture(tmp_path):
    """Wav2VecCtc layout (w2v_encoder.w2v_model. + w2v_encoder.proj), Large-style frontend and
    pre-LN, new weight-norm layout, bare state dict: architecture inferred from the shapes."""
    hf = tiny_hf("Wav2Vec2ForCTC", "layer", stable=True, heads=12)  # 12: the inferred default for dim < 1024
    sd = {f"w2v_encoder.w2v_model.{k}": v for k, v in hf_to_fairseq(hf, "layer", new_weight_norm=True).items()}
    assert "w2v_encoder.w2v_model.encoder.pos_conv.0.parametrizations.weight.original1" in sd
    assert "w2v_encoder.w2v_model.feature_extractor.conv_layers.3.0.bias" in sd
    sd["w2v_encoder.proj.weight"], sd["w2v_encoder.proj.bias"] = hf.lm_head.weight.clone(), hf.lm_head.bias.clone()
    torch.save(sd, tmp_path / "ctc.pt")
    # fairseq's target dictionary: <s> <pad> </s> <unk> + dict.ltr.txt; <s> is the CTC blank.
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{t} {100 - i}\n" for i, t in enumerate(VOCAB[4:])))
    rc = cli_main(["convert", "--from", "fairseq", "--dict", str(tmp_path / "dict.ltr.txt"),
                   str(tmp_path / "ctc.pt"), str(tmp_path / "exp")])
    assert rc == 0
    ours = load(tmp_path / "exp")
    assert isinstance(ours, CTCModel) and ours.cfg.encoder.encoder.layer_norm_first
    assert ours.cfg.encoder.extractor_mode == "layer_norm" and ours.cfg.encoder.conv_bias
    assert_matches_hf(ours, hf, group_norm=False)
    units = (tmp_path / "exp" / "units.txt").read_text().split()
    assert units == ["<blank>", "<pad>", "</s>", "<unk>"] + VOCAB[4:]
    src = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())["converted_from"]
    assert src["config"] == "inferred from weights"
    assert {"conv strides", "layer_norm_first", "encoder_attention_heads"} <= set(src["inferred"])


def w2v2_heads(G=2, V=4, vq_dim=8, final_dim=16):
    return {"quantizer.vars": torch.randn(1, G * V, vq_dim // G), "quantizer.weight_proj.weight": torch.randn(G * V, 32),
            "quantizer.weight_proj.bias": torch.randn(G * V), "project_q.weight": torch.randn(final_dim, vq_dim),
            "project_q.bias": torch.randn(final_dim), "final_proj.weight": torch.randn(final_dim, 48),
            "final_proj.bias": torch.randn(final_dim)}


def test_fairseq_wav2vec2_pretrained_namespace_args(tmp_path):
    """Old-style checkpoint: argparse ``args`` (allowed by weights_only loading) + contrastive head."""
    hf = tiny_hf("Wav2Vec2Model", "group")
    sd = hf_to_fairseq(hf, "group")
    heads = w2v2_heads()
    sd.update(heads)
    args = argparse.Namespace(**fairseq_model_cfg("wav2vec2", "group", False), arch="wav2vec2",
                              latent_temp="(2.0, 0.25, 0.99)", num_negatives=7)
    torch.save({"args": args, "model": sd}, tmp_path / "w2v.pt")
    convert(tmp_path / "w2v.pt", tmp_path / "exp", "fairseq")
    ours = load(tmp_path / "exp")
    assert type(ours).__name__ == "Wav2Vec2" and ours.cfg.encoder.encoder.num_heads == 4
    assert (ours.cfg.latent_groups, ours.cfg.latent_vars, ours.cfg.latent_dim, ours.cfg.final_dim) == (2, 4, 8, 16)
    assert list(ours.cfg.latent_temp) == [2.0, 0.25, 0.99] and ours.cfg.num_negatives == 7
    for k, v in heads.items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert_matches_hf(ours, hf, group_norm=True)

    # A head variant our model lacks (fairseq's target_glu): the encoder alone is kept.
    sd["target_glu.0.weight"] = torch.randn(32, 16)
    torch.save({"args": args, "model": sd}, tmp_path / "glu.pt")
    convert(tmp_path / "glu.pt", tmp_path / "exp2", "fairseq")
    assert type(load(tmp_path / "exp2")).__name__ == "EncoderOnly"
    src = yaml.safe_load((tmp_path / "exp2" / "config.yaml").read_text())["converted_from"]
    assert src["dropped"] == ["final_proj", "project_q", "quantizer", "target_glu"]


@pytest.mark.parametrize("norm,stable", [("group", False), ("layer", True)])
def test_fairseq2_wav2vec2(tmp_path, norm, stable):
    hf = tiny_hf("Wav2Vec2Model", norm, stable)
    sd = hf_to_fairseq2(hf, stable)
    heads = w2v2_heads()
    if stable:  # a complete contrastive head, in fairseq2's names → our wav2vec2 model
        names = {"quantizer.vars": "quantizer.entries", "quantizer.weight_proj.weight": "quantizer.entry_proj.weight",
                 "quantizer.weight_proj.bias": "quantizer.entry_proj.bias", "project_q.weight": "final_target_proj.weight",
                 "project_q.bias": "final_target_proj.bias"}
        sd.update({names.get(k, k): v for k, v in heads.items()})
        sd["quantizer.num_updates"] = torch.zeros(())
    else:  # an incomplete one is left out
        sd["quantizer.entries"], sd["final_target_proj.weight"] = torch.randn(1, 8, 8), torch.randn(16, 8)
    torch.save({"model": sd}, tmp_path / "fs2.pt")
    convert(tmp_path / "fs2.pt", tmp_path / "exp", "fairseq2", num_heads=4)
    ours = load(tmp_path / "exp")
    assert type(ours).__name__ == ("Wav2Vec2" if stable else "EncoderOnly")
    if stable:
        for k, v in heads.items():
            assert torch.equal(ours.state_dict()[k], v), k
    assert ours.cfg.encoder.encoder.layer_norm_first == stable  # read from the key names
    assert_matches_hf(ours, hf, group_norm=norm == "group")


# ------------------------------------------------------------------ to transformers


def small_encoder(norm="group"):
    return {
        "conv_layers": [[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2, "extractor_mode": f"{norm}_norm",
        "conv_bias": norm == "layer",
        "encoder": {"embed_dim": 48, "ffn_dim": 96, "num_layers": 2, "num_heads": 4, "conv_pos": 16,
                    "conv_pos_groups": 4, "layer_norm_first": norm == "layer"},
    }


def test_round_trip_hubert(tmp_path):
    torch.manual_seed(1)
    ours = build_model({"name": "hubert", "num_classes": 20, "final_dim": 16, "encoder": small_encoder()}).eval()
    write_exp(ours, tmp_path / "exp")
    assert cli_main(["convert", "--to", "hf", str(tmp_path / "exp"), str(tmp_path / "hf")]) == 0
    hf = transformers.HubertModel.from_pretrained(tmp_path / "hf").eval()
    assert_matches_hf(ours, hf, group_norm=True)
    convert(tmp_path / "hf", tmp_path / "back", "hf")
    back = load(tmp_path / "back")
    for k, v in ours.encoder.state_dict().items():
        assert torch.equal(back.encoder.state_dict()[k], v), k


def test_round_trip_ctc(tmp_path):
    torch.manual_seed(2)
    ours = build_model({"name": "ctc", "vocab_size": 6, "encoder": small_encoder("layer")}).eval()
    units = ["<blank>", "|", "'", "A", "B", "C"]
    write_exp(ours, tmp_path / "exp", units=units)
    export(tmp_path / "exp", tmp_path / "hf")
    vocab = json.loads((tmp_path / "hf" / "vocab.json").read_text())
    assert vocab == {"<pad>": 0, "|": 1, "'": 2, "A": 3, "B": 4, "C": 5}
    hf = transformers.HubertForCTC.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.pad_token_id == 0
    assert_matches_hf(ours, hf, group_norm=False)
    convert(tmp_path / "hf", tmp_path / "back", "hf")
    assert (tmp_path / "back" / "units.txt").read_text().split() == units
    back = load(tmp_path / "back")
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# ------------------------------------------------------------------ bad input


def test_unknown_layout_lists_expected_prefixes(tmp_path):
    torch.save({"model": {"conformer.layers.0.weight": torch.zeros(3)}}, tmp_path / "x.pt")
    with pytest.raises(SslseqError, match="unknown checkpoint layout") as e:
        convert(tmp_path / "x.pt", tmp_path / "exp", "fairseq")
    msg = str(e.value)
    for prefix in ("w2v_encoder.w2v_model.", "encoder_frontend.feature_extractor.layers", "feature_extractor.conv_layers.N.0",
                   "encoder.pos_conv_embed"):
        assert prefix in msg
    assert cli_main(["convert", "--from", "fairseq", str(tmp_path / "x.pt"), str(tmp_path / "exp")]) == 1


class NotAllowed:  # stands in for fairseq's omegaconf DictConfig
    pass


def test_wrong_flavor_and_unsafe_pickle(tmp_path):
    hf = tiny_hf("Wav2Vec2Model", "group")
    torch.save({"model": hf_to_fairseq2(hf, False)}, tmp_path / "fs2.pt")
    with pytest.raises(SslseqError, match="use --from fairseq2"):
        convert(tmp_path / "fs2.pt", tmp_path / "exp", "fairseq")

    torch.save({"model": hf_to_fairseq(hf, "group"), "cfg": NotAllowed()}, tmp_path / "omega.pt")
    with pytest.raises(SslseqError, match=r"(?s)cannot be loaded safely .*NotAllowed.*torch.save\(\{'model'"):
        convert(tmp_path / "omega.pt", tmp_path / "exp", "fairseq")
    assert not (tmp_path / "exp").exists()


def test_shape_mismatch_names_parameter_and_shapes(tmp_path):
    hf = tiny_hf("HubertModel", "group")
    cfg = {"model": fairseq_model_cfg("hubert", "group", False, encoder_ffn_embed_dim=64), "task": {}}
    torch.save({"model": hf_to_fairseq(hf, "group"), "cfg": cfg}, tmp_path / "bad.pt")
    with pytest.raises(SslseqError, match=r"'encoder\.encoder\.layers\.0\.fc1\.weight' has shape \(96, 48\) in the weights but \(64, 48\)"):
        convert(tmp_path / "bad.pt", tmp_path / "exp", "fairseq")


def test_hf_unsupported_and_existing_output(tmp_path):
    hf = tiny_hf("HubertModel", "layer")
    hf.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "exp", "hf")
    with pytest.raises(SslseqError, match="--overwrite"):
        convert(tmp_path / "hf", tmp_path / "exp", "hf")
    convert(tmp_path / "hf", tmp_path / "exp", "hf", overwrite=True)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["architectures"] = ["HubertForSequenceClassification"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SslseqError, match="not supported; supported: HubertModel"):
        convert(tmp_path / "hf", tmp_path / "exp2", "hf")
    with pytest.raises(SslseqError, match="no config.json"):
        convert(tmp_path, tmp_path / "exp3", "hf")
