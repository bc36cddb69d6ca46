"""DinoSR: EMA teacher schedule and update, online codebooks (hand computation, 2-process
all-reduce), targets and loss, health logs, configs, trainer + CTC, exact kill/resume."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from multiproc import TIMEOUT, gloo_group, spawn, torchrun  # noqa: E402
from test_models import small_encoder  # noqa: E402

from sslseq.models import CTCModel, build_model, load, model_config_dict, save_weights  # noqa: E402
from sslseq.models.dinosr import DinoSR, ema_decay_at, instance_norm_valid  # noqa: E402
from sslseq.objectives.codebook import OnlineCodebooks, codeword_perplexity  # noqa: E402
from sslseq.utils import SslseqError  # noqa: E402

SR = 16000
CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"


def dinosr_cfg(**over):
    cfg = {"name": "dinosr", "top_k_layers": 2, "codebook_size": 16, "ema_decay": 0.9, "ema_end_decay": 0.99,
           "ema_anneal_end_step": 10, "encoder": small_encoder(extractor_mode="group_norm")}
    cfg.update(over)
    return cfg


def batch(lens_sec=(1.0, 0.7, 0.45), seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([int(s * SR) for s in lens_sec])
    wav = torch.randn(len(lens), int(lens.max()), generator=g) * 0.1
    return {"wav": wav * (torch.arange(wav.size(1))[None, :] < lens[:, None]), "wav_lens": lens}


def teacher_params(model):
    return {k: v.detach().clone() for k, v in model.teacher.named_parameters()}


# ------------------------------------------------------------------ EMA teacher


def test_ema_decay_schedule():
    # Base: 0.999 -> 0.9999 linearly over the first 30k updates, constant after.
    assert ema_decay_at(0, 0.999, 0.9999, 30000) == pytest.approx(0.999)
    assert ema_decay_at(15000, 0.999, 0.9999, 30000) == pytest.approx(0.99945)
    assert ema_decay_at(29999, 0.999, 0.9999, 30000) == pytest.approx(0.9999 - 0.0009 / 30000)
    assert ema_decay_at(30000, 0.999, 0.9999, 30000) == 0.9999
    assert ema_decay_at(400000, 0.999, 0.9999, 30000) == 0.9999
    assert ema_decay_at(5, 0.9, 0.99, 0) == 0.99  # no annealing: the end value throughout
    with torch.device("meta"):
        base = build_model(yaml.safe_load((CONF / "model_dinosr_base.yaml").read_text()))
    base.num_updates = 0  # meta tensors: the schedule alone (set_num_updates would average them)
    assert base.ema_decay == pytest.approx(0.999)
    base.num_updates = 15000
    assert base.ema_decay == pytest.approx(0.99945)


def test_teacher_gets_no_gradient_and_moves_by_the_ema_formula():
    torch.manual_seed(0)
    model = build_model(dinosr_cfg())
    assert isinstance(model, DinoSR) and model.needs_labels is False
    # The teacher starts as a copy of the student's Transformer and is never trained.
    s0 = dict(model.encoder.encoder.named_parameters())
    t0 = teacher_params(model)
    assert t0.keys() == s0.keys() and all(torch.equal(t0[k], s0[k]) for k in t0)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert model.training and not model.teacher.training  # no dropout in the teacher

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    out = model(batch())
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    opt.step()
    assert all(torch.equal(v, t0[k]) for k, v in model.teacher.named_parameters())  # backward + step: unchanged
    student = {k: v.detach().clone() for k, v in model.encoder.encoder.named_parameters()}
    assert any(not torch.equal(student[k], t0[k]) for k in t0)

    model.set_num_updates(1)
    d = 0.9 + (0.99 - 0.9) * 1 / 10
    assert model.ema_decay == pytest.approx(d) and int(model.teacher_step) == 1
    for k, v in model.teacher.named_parameters():
        want = student[k] if k.startswith("pos_conv.") else d * t0[k] + (1 - d) * student[k]
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-7, msg=k)  # fp32 rounding only
    t1 = teacher_params(model)
    model.set_num_updates(0)
    model.set_num_updates(1)  # the same step again (or a resumed run's first call): no second average
    assert all(torch.equal(v, t1[k]) for k, v in model.teacher.named_parameters())
    out2 = model(batch(seed=1))
    assert out2.logs["ema_decay"] == pytest.approx(d)


def test_ema_layers_only_false_averages_the_positional_conv_too():
    torch.manual_seed(0)
    model = build_model(dinosr_cfg(ema_layers_only=False, ema_decay=0.5, ema_end_decay=0.5))
    t0 = teacher_params(model)
    with torch.no_grad():
        for p in model.encoder.encoder.parameters():
            p.add_(1.0)
    model.set_num_updates(1)
    for k, v in model.teacher.named_parameters():
        torch.testing.assert_close(v, t0[k] + 0.5, msg=k)


# ------------------------------------------------------------------ online codebooks


def test_codebook_assign_and_update_by_hand():
    torch.manual_seed(0)
    cb = OnlineCodebooks(2, 4, 3, decay=0.9)
    with torch.no_grad():
        cb.sums.copy_(torch.randn(2, 4, 3) * 2)
        cb.counts.copy_(torch.tensor([[1.0, 2.0, 0.5, 1.5], [1.0, 1.0, 3.0, 0.25]]))
    sums0, counts0 = cb.sums.clone(), cb.counts.clone()
    code = sums0 / counts0[..., None]
    z = torch.randn(2, 5, 3) * 2
    ids = cb.assign(z)
    for g in range(2):
        for t in range(5):
            d = [float(((z[g, t] - code[g, v]) ** 2).sum()) for v in range(4)]
            assert int(ids[g, t]) == min(range(4), key=d.__getitem__)
    ids = torch.tensor([[0, 0, 2, 0, 2], [1, 1, 1, 1, 1]])  # some codewords hit, others not
    cb.update(z, ids)
    for g in range(2):
        for v in range(4):
            hit = [t for t in range(5) if int(ids[g, t]) == v]
            if not hit:  # untouched
                assert torch.equal(cb.sums[g, v], sums0[g, v]) and cb.counts[g, v] == counts0[g, v]
                continue
            want_n = 0.9 * counts0[g, v] + 0.1 * len(hit)
            want_s = 0.9 * sums0[g, v] + 0.1 * sum(z[g, t] for t in hit)
            torch.testing.assert_close(cb.counts[g, v], want_n)
            torch.testing.assert_close(cb.sums[g, v], want_s)
    # No frames: nothing changes (a process whose batch had nothing masked still joins the update).
    s1, n1 = cb.sums.clone(), cb.counts.clone()
    cb.update(torch.zeros(2, 0, 3), torch.zeros(2, 0, dtype=torch.long))
    assert torch.equal(cb.sums, s1) and torch.equal(cb.counts, n1)
    with pytest.raises(ValueError, match="num_codebooks=2"):
        cb.assign(torch.zeros(3, 5, 3))


def test_codebook_init_and_perplexity():
    torch.manual_seed(0)
    cb = OnlineCodebooks(3, 64, 8)
    # Each dimension standardised across the codewords, counts 1 (DinoSR's init).
    torch.testing.assert_close(cb.codewords.mean(dim=1), torch.zeros(3, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(cb.codewords.var(dim=1, unbiased=False), torch.ones(3, 8), atol=1e-3, rtol=0)
    assert torch.equal(cb.counts, torch.ones(3, 64))
    ids = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3], [0, 0, 1, 1]])
    torch.testing.assert_close(codeword_perplexity(ids, 64), torch.tensor([1.0, 4.0, 2.0]))


def _codebook_worker(rank: int, world: int, store: str, out_dir: str) -> None:
    with gloo_group(rank, world, store):
        torch.manual_seed(0)  # same initial codebooks on every process
        cb = OnlineCodebooks(2, 8, 4, decay=0.9)
        z = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(1))
        half = z[:, rank * 6:(rank + 1) * 6]
        cb.update(half, cb.assign(half))
        torch.save({"sums": cb.sums, "counts": cb.counts}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_codebook_update_all_reduced_over_two_processes(tmp_path):
    spawn(_codebook_worker, args=(2, str(tmp_path / "store"), str(tmp_path)))
    torch.manual_seed(0)
    cb = OnlineCodebooks(2, 8, 4, decay=0.9)
    z = torch.randn(2, 12, 4, generator=torch.Generator().manual_seed(1))
    before = cb.sums.clone()
    cb.update(z, cb.assign(z))  # world size 1, the whole batch
    assert not torch.equal(cb.sums, before)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["sums"], cb.sums, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got["counts"], cb.counts, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ targets and loss


def _teacher_ffn_outputs_by_hand(teacher, x):
    """Post-LN layers written out: each layer's FFN output before the last residual."""
    x = teacher.layer_norm(x + teacher.pos_conv(x))
    ffn = []
    for layer in teacher.layers:
        a = layer.self_attn_layer_norm(x + layer.self_attn(x))
        f = layer.fc2(F.gelu(layer.fc1(a)))
        ffn.append(f)
        x = layer.final_layer_norm(a + f)
    return ffn


@pytest.mark.parametrize("target", ["ffn", "layer"])
def test_targets_are_nearest_codewords_of_instance_normalised_teacher_layers(target):
    torch.manual_seed(0)
    model = build_model(dinosr_cfg(target_layer_output=target, encoder=small_encoder(
        extractor_mode="group_norm", encoder={**small_encoder()["encoder"], "num_layers": 3})))
    model.eval()  # no codebook update: the loss below uses the same codebooks
    b = batch(lens_sec=(0.8, 0.8))  # unpadded: F.instance_norm applies as is
    torch.manual_seed(5)
    out = model(b)
    torch.manual_seed(5)  # the same mask again
    enc = model.encoder(b["wav"], b["wav_lens"], mask=True, return_features=True)
    with torch.no_grad():
        x_in = model.encoder.post_extract_proj(enc.features)
        if target == "ffn":
            layers = _teacher_ffn_outputs_by_hand(model.teacher, x_in)[-2:]
        else:
            layers = model.teacher(x_in, output_hidden_states=True)[1][-2:]
        z = [F.instance_norm(y.transpose(1, 2)).transpose(1, 2) for y in layers]
        torch.testing.assert_close(model.teacher_targets(enc.features, enc.padding_mask), torch.stack(z),
                                   rtol=1e-4, atol=1e-4)
        sel = enc.mask_indices
        loss = 0.0
        for g in range(2):
            ids = torch.cdist(z[g][sel], model.codebooks.codewords[g]).argmin(-1)
            loss = loss + F.cross_entropy(model.heads[g](enc.x[sel]), ids, reduction="sum") / 2
    assert out.sample_size == int(sel.sum()) == out.logs["n_masked"]
    assert out.loss.item() == pytest.approx(float(loss), rel=1e-5)


def test_instance_norm_ignores_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 5)
    valid = torch.ones(2, 7, dtype=torch.bool)
    torch.testing.assert_close(instance_norm_valid(x, valid), F.instance_norm(x.transpose(1, 2)).transpose(1, 2))
    valid[1, 4:] = False
    padded = x.clone()
    padded[1, 4:] = 100.0
    short = F.instance_norm(x[1:, :4].transpose(1, 2)).transpose(1, 2)[0]
    torch.testing.assert_close(instance_norm_valid(padded, valid)[1, :4], short)


def test_loss_only_on_masked_frames():
    torch.manual_seed(0)
    model = build_model(dinosr_cfg())
    grabbed = {}

    def keep(module, inputs, output):
        output.x.retain_grad()
        grabbed["out"] = output

    model.encoder.register_forward_hook(keep)
    out = model(batch())
    out.loss.backward()
    enc = grabbed["out"]
    got = enc.x.grad.abs().sum(-1) > 0
    assert torch.equal(got, enc.mask_indices & ~enc.padding_mask) and int(got.sum()) == out.sample_size
    assert model.encoder.mask_emb.grad.abs().sum() > 0
    assert all(h.weight.grad.abs().sum() > 0 for h in model.heads)


def test_forward_logs_and_codebook_update_only_in_training():
    torch.manual_seed(0)
    model = build_model(dinosr_cfg())
    out = model(batch())
    n = out.sample_size
    assert set(out.logs) >= {"loss", "loss_bits", "chance_bits", "acc", "acc_l1", "acc_l2", "code_ppl", "code_ppl_l1",
                             "code_ppl_l2", "n_masked", "ema_decay", "codebook_decay"}
    assert out.logs["chance_bits"] == 4.0 and out.logs["loss"] == pytest.approx(out.loss.item() / n)
    assert out.logs["loss_bits"] == pytest.approx(out.logs["loss"] / math.log(2))
    assert out.logs["acc"] == pytest.approx((out.logs["acc_l1"] + out.logs["acc_l2"]) / 2, abs=1e-6)
    assert 1.0 <= out.logs["code_ppl_l1"] <= 16.0
    # Random heads at init: close to chance (log2 16 bits per frame).
    assert abs(out.logs["loss_bits"] - 4.0) < 1.0
    sums = model.codebooks.sums.clone()
    model.eval()
    model(batch(seed=1))
    assert torch.equal(model.codebooks.sums, sums)  # validation does not move the codebooks
    model.train()
    model(batch(seed=1))
    assert not torch.equal(model.codebooks.sums, sums)
    assert not model.teacher.training


def test_batch_without_masked_frames():
    torch.manual_seed(0)
    model = build_model(dinosr_cfg(encoder=small_encoder(mask_prob=1e-6, mask_min_masks=0)))
    sums = model.codebooks.sums.clone()
    out = model(batch())
    assert out.sample_size == 0 and out.loss.item() == 0.0 and out.logs["n_masked"] == 0.0
    out.loss.backward()  # the heads still get a (zero) gradient, as DDP expects
    assert all(p.grad is not None for p in model.heads.parameters())
    assert torch.equal(model.codebooks.sums, sums)


def test_collapsed_codebook_is_logged_for_the_health_checks():
    torch.manual_seed(0)
    model = build_model(dinosr_cfg())
    with torch.no_grad():  # one codeword near every target, the others far away: perplexity 1
        model.codebooks.sums.mul_(1000.0)
        model.codebooks.sums[:, 0].zero_()
    out = model(batch())
    assert out.logs["code_ppl"] == pytest.approx(1.0)
    bound = min(model.cfg.codebook_size, out.sample_size)
    assert out.logs["codebook_use"] == pytest.approx(1.0 / bound)  # < 0.1: the trainer warns


def test_config_errors():
    with pytest.raises(SslseqError, match="top_k_layers must be in"):
        build_model(dinosr_cfg(top_k_layers=3))
    with pytest.raises(SslseqError, match="dropout_features"):
        build_model(dinosr_cfg(encoder=small_encoder(dropout_features=0.1)))
    with pytest.raises(SslseqError, match="target_layer_output"):
        build_model(dinosr_cfg(target_layer_output="attn"))
    with pytest.raises(SslseqError, match="mask_prob"):
        build_model(dinosr_cfg(encoder=small_encoder(mask_prob=0.0)))
    with pytest.raises(SslseqError, match="Did you mean: codebook_size"):
        build_model(dinosr_cfg(codebook_sizes=3))


def test_state_dict_round_trip_and_ctc_takes_the_student(tmp_path):
    torch.manual_seed(0)
    model = build_model(dinosr_cfg())
    model(batch())  # move the codebooks
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.01)
    model.set_num_updates(3)
    sd = model.state_dict()
    assert {"codebooks.sums", "codebooks.counts", "teacher_step"} <= set(sd)
    assert any(k.startswith("teacher.layers.") for k in sd)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": model_config_dict(model)}))
    save_weights(model, tmp_path / "model.safetensors")
    loaded = load(tmp_path)
    assert isinstance(loaded, DinoSR) and loaded.cfg == model.cfg and int(loaded.teacher_step) == 3
    ls = loaded.state_dict()
    assert all(torch.equal(v, ls[k]) for k, v in sd.items())
    ctc = CTCModel.from_pretrained(loaded, {"name": "ctc", "vocab_size": 12})
    cs = ctc.encoder.state_dict()
    assert all(torch.equal(v, cs[k]) for k, v in loaded.encoder.state_dict().items())
    # The student, not the teacher: they differ after the student moved.
    assert not torch.equal(cs["encoder.layers.0.fc1.weight"], sd["teacher.layers.0.fc1.weight"])


def test_tiny_and_base_yaml_build():
    tiny = yaml.safe_load((CONF / "model_dinosr_tiny.yaml").read_text())
    hubert = yaml.safe_load((CONF / "model_hubert_tiny.yaml").read_text())
    arch = ("conv_layers", "extractor_mode", "conv_bias")
    # Same encoder architecture as the HuBERT tiny: ctc_tiny.yaml fine-tunes it (and its scratch twin).
    assert {k: tiny["encoder"][k] for k in arch} == {k: hubert["encoder"][k] for k in arch}
    assert tiny["encoder"]["encoder"] == hubert["encoder"]["encoder"]
    m = build_model(tiny)
    assert m.frame_rate == 50.0 and m.codebooks.sums.shape == (3, 64, 256)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) < 6e6
    base = yaml.safe_load((CONF / "model_dinosr_base.yaml").read_text())
    with torch.device("meta"):  # shapes only
        mb = build_model(base)
    student = sum(p.numel() for p in mb.parameters() if p.requires_grad)
    assert 94.5e6 < student < 96.5e6, student  # wav2vec 2.0 Base encoder + 8 heads of 768 x 256
    assert mb.codebooks.sums.shape == (8, 256, 768) and len(mb.heads) == 8
    assert mb.cfg.encoder.extractor_mode == "layer_norm" and mb.cfg.encoder.mask_prob == 0.8
    from sslseq.train.config import load_train_config

    for size in ("tiny", "base"):
        cfg = load_train_config(CONF / f"pretrain_dinosr_{size}.yaml", ["out_dir=x", "data.train=d", "data.valid=v"])
        assert cfg.model["name"] == "dinosr" and cfg.data.labels_train is None


# ------------------------------------------------------------------ trainer


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log" / "train.jsonl").read_text().splitlines()]


# A smaller Transformer than the tiny config's (fast on 2 cores); CTC fine-tuning repeats it.
ARCH = ["model.encoder.encoder.num_layers=2", "model.encoder.encoder.ffn_dim=256", "model.encoder.encoder.embed_dim=64",
        "model.encoder.encoder.num_heads=2", "model.encoder.encoder.conv_pos_groups=4"]
SMALL = ["data.max_batch_seconds=8", "data.max_sample_seconds=2", "max_valid_batches=1", "log_interval=1", *ARCH,
         "model.top_k_layers=2", "model.ema_decay=0.9", "model.ema_end_decay=0.99", "model.ema_anneal_end_step=4"]


def test_dinosr_then_ctc_on_tiny_corpus(tmp_path, tiny_data):
    from sslseq.train.config import load_train_config
    from sslseq.train.trainer import Trainer, train_from_config

    over = [f"out_dir={tmp_path / 'dinosr'}", f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}",
            "optim.max_steps=3", "optim.update_freq=2", "save_interval=3", *SMALL]
    trainer = Trainer(load_train_config(CONF / "pretrain_dinosr_tiny.yaml", over))
    trainer.setup()
    teacher_ids = {id(p) for p in trainer.unwrapped.teacher.parameters()}
    in_optim = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert teacher_ids and not teacher_ids & in_optim  # the teacher is not trained by the optimizer
    assert {id(p) for p in trainer.unwrapped.heads.parameters()} <= in_optim
    pre = trainer._loop(None)
    model = load(pre)
    assert isinstance(model, DinoSR) and int(model.teacher_step) == 2  # absorbed the student after updates 1, 2
    rec = _jsonl(pre)
    train = [r for r in rec if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in train)
    # Decay logged at the step the update ran with: 0.9 + 0.09 * s / 4 for steps s = 0, 1, 2.
    assert [r["ema_decay"] for r in train] == pytest.approx([0.9, 0.9225, 0.945])
    assert all(r["chance_bits"] == 6.0 and "code_ppl_l1" in r and "acc_l2" in r for r in train)
    assert math.isfinite([r for r in rec if "valid_loss" in r][-1]["valid_loss"])
    sd = model.state_dict()
    assert not torch.equal(sd["teacher.layers.0.fc1.weight"], sd["encoder.encoder.layers.0.fc1.weight"])

    ctc_over = [f"out_dir={tmp_path / 'ctc'}", f"init={pre}", f"data.train={tiny_data / 'train'}",
                f"data.valid={tiny_data / 'dev'}", "optim.max_steps=2", "model.freeze_encoder_steps=1",
                "data.max_batch_seconds=8", "data.max_sample_seconds=8", "max_valid_batches=1", "save_interval=2", *ARCH]
    ft = train_from_config(CONF / "ctc_tiny.yaml", ctc_over)
    cs = load(ft).state_dict()
    front = [k for k in cs if k.startswith("encoder.feature_extractor.")]
    assert front and all(torch.equal(cs[k], sd[k]) for k in front)  # the student's frontend, kept frozen
    assert any(not torch.equal(cs[k], sd[k]) for k in cs if k.startswith("encoder.encoder.layers."))


def test_kill_and_resume_reproduces_losses(tmp_path, tiny_data):
    from sslseq.train import checkpoint as ckpt
    from sslseq.train.config import load_train_config
    from sslseq.train.trainer import Trainer

    def cfg(name):
        return load_train_config(CONF / "pretrain_dinosr_tiny.yaml", [
            f"out_dir={tmp_path / name}", f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}",
            "optim.max_steps=6", "save_interval=2", "valid_interval=3", "optim.warmup_steps=2", *SMALL])

    ref = Trainer(cfg("ref")).fit()
    killed = cfg("killed")
    Trainer(killed).fit(stop_at_step=3)  # "killed" after step 3: resumes from step 2
    assert [s for s, _ in ckpt.step_dirs(Path(killed.out_dir) / "checkpoints")] == [2]
    Trainer(killed).fit()
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(Path(killed.out_dir) / "model.safetensors"))
    assert a.keys() == b.keys() and {"codebooks.sums", "teacher_step"} <= a.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("frames_per_s", "audio_s_per_s")} for r in rs]
    la, lb = strip(_jsonl(ref)), strip(_jsonl(Path(killed.out_dir)))
    assert la == lb and len([r for r in la if "loss" in r]) == 6


def test_two_process_training_through_torchrun(tmp_path):
    """DDP on CPU (gloo, loopback): the codebook all-reduce inside forward runs beside DDP's own
    collectives without a hang, and both processes train (a smoke test; the exact equivalence of
    the statistics is test_codebook_update_all_reduced_over_two_processes)."""
    import subprocess

    from test_train import _tone_corpus

    train, _ = _tone_corpus(tmp_path / "train", 8, seed=0)
    model = dinosr_cfg()
    cfg = {"task": "pretrain", "model": model, "device": "cpu", "log_interval": 1, "save_interval": 2,
           "data": {"train": str(train), "max_batch_seconds": 4.0, "max_sample_seconds": 2.0},
           "optim": {"lr": 1e-3, "warmup_steps": 0, "max_steps": 2}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "ddp"
    env = {**os.environ, "SSLSEQ_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [*torchrun(2), "-m", "sslseq.cli", "train", str(path), f"out_dir={out}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=2 * TIMEOUT)
    assert r.returncode == 0, r.stderr[-5000:]
    train_rec = [r for r in _jsonl(out) if "loss" in r]
    assert [r["step"] for r in train_rec] == [1, 2] and all(math.isfinite(r["loss"]) for r in train_rec)
    final = load(out)
    # Counts start at 1: codewords hit during training moved off it; the teacher absorbed step 1.
    assert int(final.teacher_step) == 1 and bool((final.codebooks.counts != 1).any())
