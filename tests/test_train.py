"""Trainer: learning, gradient accumulation, exact resume, checkpoints, configs, schedules;
integration with the real HuBERT and CTC models on the tiny synthesized corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from torch import nn

from sslseq.data.dataset import collate, expected_frames
from sslseq.models import ModelOutput
from sslseq.train import checkpoint as ckpt
from sslseq.train.config import OptimConfig, load_train_config
from sslseq.train.schedule import linear_lr, lr_at, tri_stage_lr
from sslseq.train.trainer import Trainer, train_from_config
from sslseq.utils import SslseqError

SR = 16000
FREQS = [250.0, 600.0, 1300.0, 2800.0]
CONF = Path(__file__).resolve().parents[1] / "recipes" / "conf"


class FrameClassifier(nn.Module):
    """A real (small) model with the trainer's model contract: a strided conv over the
    waveform at 50 Hz predicts each frame's 100 Hz label (every second one); loss summed."""

    def __init__(self, num_classes: int = 4, hidden: int = 16, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv1d(1, hidden, 400, stride=320)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_classes)
        self.cfg = {"name": "frame_classifier", "num_classes": num_classes, "hidden": hidden}
        self.frame_rate = 50.0
        self.updates: list[int] = []

    def set_num_updates(self, step: int) -> None:
        self.updates.append(step)

    def forward(self, batch):
        wav, lens = batch["wav"], batch["wav_lens"]
        x = self.head(self.drop(torch.relu(self.conv(wav[:, None] * 10))).transpose(1, 2))  # (B, T, K)
        B, T, _ = x.shape
        labels, label_lens = batch["labels"], batch["label_lens"]
        idx = torch.arange(T) * 2
        tgt = labels.gather(1, idx.clamp(max=labels.size(1) - 1).expand(B, T))
        frame_lens = torch.where(lens >= 400, (lens - 400) // 320 + 1, 0)
        ok = (idx[None] < label_lens[:, None]) & (torch.arange(T)[None] < frame_lens[:, None])
        loss = F.cross_entropy(x[ok], tgt[ok], reduction="sum")
        acc = float((x[ok].argmax(-1) == tgt[ok]).float().mean()) if ok.any() else 0.0
        return ModelOutput(loss, int(ok.sum()), {"acc": acc})


def _tone_corpus(root: Path, n: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Data dir of tone sequences (0.2 s segments, one of 4 frequencies) and their 100 Hz labels."""
    rng = np.random.default_rng(seed)
    (root / "wav").mkdir(parents=True)
    scp, u2s, u2d, km, utts = [], [], [], [], []
    for i in range(n):
        utt = f"utt{i:03d}"
        segs = rng.integers(0, 4, int(rng.integers(5, 13)))
        cls = np.repeat(segs, int(0.2 * SR))
        t = np.arange(len(cls)) / SR
        wav = 0.5 * np.sin(2 * np.pi * np.asarray(FREQS)[cls] * t) + 0.01 * rng.standard_normal(len(cls))
        path = root / "wav" / f"{utt}.wav"
        sf.write(path, wav.astype(np.float32), SR)
        frames = expected_frames(len(wav), 100.0)
        lab = cls[np.minimum(np.arange(frames) * 160 + 200, len(cls) - 1)]
        scp.append(f"{utt} {path}\n")
        u2s.append(f"{utt} s{i % 3}\n")
        u2d.append(f"{utt} {len(wav) / SR:.4f}\n")
        km.append(" ".join(map(str, lab.tolist())) + "\n")
        utts.append(f"{utt}\n")
    (root / "wav.scp").write_text("".join(scp))
    (root / "utt2spk").write_text("".join(u2s))
    (root / "utt2dur").write_text("".join(u2d))
    lab_dir = root.parent / f"labels_{root.name}"
    lab_dir.mkdir()
    (lab_dir / "set.km").write_text("".join(km))
    (lab_dir / "set.utts").write_text("".join(utts))
    (lab_dir / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(4)))
    (lab_dir / "labels.yaml").write_text(yaml.safe_dump({"label_rate": 100.0, "k": 4, "dim": 13}))
    return root, lab_dir / "set.km"


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    base = tmp_path_factory.mktemp("tones")
    train, km = _tone_corpus(base / "train", 16, seed=0)
    valid, vkm = _tone_corpus(base / "valid", 4, seed=1)
    return {"train": train, "km": km, "valid": valid, "vkm": vkm}


def _cfg(tmp: Path, tones, name: str, *over: str):
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "pretrain",
                "out_dir": str(tmp / name),
                "data": {
                    "train": str(tones["train"]),
                    "labels_train": str(tones["km"]),
                    "valid": str(tones["valid"]),
                    "labels_valid": str(tones["vkm"]),
                    "max_batch_seconds": 6.0,
                    "max_sample_seconds": 2.0,
                },
                "optim": {"lr": 1e-2, "warmup_steps": 2, "max_steps": 30, "clip_norm": 5.0},
                "log_interval": 1,
                "valid_interval": 10,
                "save_interval": 10,
            }
        )
    )
    return load_train_config(path, list(over))


def _jsonl(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log" / "train.jsonl").read_text().splitlines()]


def test_loss_decreases_and_outputs(tmp_path, tones):
    cfg = _cfg(tmp_path, tones, "run")
    model = FrameClassifier()
    out = Trainer(cfg, model=model).fit()
    rec = [r for r in _jsonl(out) if "loss" in r]
    assert [r["step"] for r in rec] == list(range(1, 31))
    first, last = np.mean([r["loss"] for r in rec[:3]]), np.mean([r["loss"] for r in rec[-3:]])
    assert last < 0.6 * first, (first, last)
    assert model.updates == list(range(30))  # set_num_updates once per step, before it
    for key in ("lr", "grad_norm", "acc", "frames_per_s", "padding_ratio"):
        assert key in rec[-1]
    valid = [r for r in _jsonl(out) if "valid_loss" in r]
    assert [r["step"] for r in valid] == [10, 20, 30]
    assert valid[-1]["valid_loss"] < valid[0]["valid_loss"]
    summary = yaml.safe_load((out / "train_summary.yaml").read_text())
    assert summary["steps"] == 30 and summary["best_valid_loss"] == min(r["valid_loss"] for r in valid)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == model.cfg and saved["optim"]["max_steps"] == 30
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(weights["head.weight"], model.head.weight.detach())
    dirs = ckpt.step_dirs(out / "checkpoints")
    assert [s for s, _ in dirs] == [20, 30]  # keep_last 2
    best = yaml.safe_load((out / "checkpoints" / "best" / "best.yaml").read_text())  # ... and the best
    best_rec = min(valid, key=lambda r: r["valid_loss"])
    assert best == {"metric": "valid_loss", "value": best_rec["valid_loss"], "step": best_rec["step"]}
    assert (out / "checkpoints" / "best" / "model.safetensors").is_file() and summary["best"] == best
    state = torch.load(dirs[-1][1] / ckpt.STATE, weights_only=True)
    assert state["step"] == 30 and "optimizer" in state and "rng" in state
    assert any((out / "tensorboard").iterdir())
    # Finished with the same config: returns at once without touching the model.
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert Trainer(cfg, model=FrameClassifier()).fit() == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    # A final model changed after it was written (same size) is not finished: the last checkpoint
    # writes it again, byte for byte.
    good = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert Trainer(cfg, model=FrameClassifier()).fit() == out
    assert (out / "model.safetensors").read_bytes() == good


def _setup(cfg, model):
    t = Trainer(cfg, model=model)
    t.setup()
    return t


def test_gradient_accumulation_matches_full_batch(tmp_path, tones):
    from sslseq.data.dataset import SpeechDataset

    ds = SpeechDataset(tones["train"], labels=tones["km"], max_sample_seconds=2.0)
    items = [ds[(i, 0)] for i in range(6)]
    full = _setup(_cfg(tmp_path, tones, "a", "optim.update_freq=1"), FrameClassifier(dropout=0.0))
    half = _setup(_cfg(tmp_path, tones, "b", "optim.update_freq=2"), FrameClassifier(dropout=0.0))
    for step in range(3):  # several steps: Adam state must agree too
        sf_ = full.train_step([collate(items)])
        sh = half.train_step([collate(items[:2]), collate(items[2:])])
        assert sf_["sample_size"] == sh["sample_size"]
        assert sf_["loss"] == pytest.approx(sh["loss"], rel=1e-5)
        assert sf_["grad_norm"] == pytest.approx(sh["grad_norm"], rel=1e-4)
        for p, q in zip(full.unwrapped.parameters(), half.unwrapped.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_kill_and_resume_is_exact(tmp_path, tones):
    over = ("optim.update_freq=2", "optim.max_steps=12", "save_interval=4", "valid_interval=6")
    ref = Trainer(_cfg(tmp_path, tones, "ref", *over), model=FrameClassifier()).fit()
    cfg = _cfg(tmp_path, tones, "killed", *over)
    Trainer(cfg, model=FrameClassifier()).fit(stop_at_step=7)  # "killed" after step 7
    assert [s for s, _ in ckpt.step_dirs(cfg.out_dir + "/checkpoints")] == [4]
    (Path(cfg.out_dir) / "checkpoints" / ".tmp_step_8_x").mkdir()  # a save cut short by the kill
    model = FrameClassifier(seed=123)  # other init: the checkpoint must replace it
    Trainer(cfg, model=model).fit()
    assert model.updates == list(range(4, 12))
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(Path(cfg.out_dir) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _jsonl(ref), _jsonl(Path(cfg.out_dir))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("frames_per_s", "audio_s_per_s")} for r in rs]
    assert strip(la) == strip(lb)  # every step logged once, same losses, same valid losses
    assert not (Path(cfg.out_dir) / "checkpoints" / ".tmp_step_8_x").exists()
    # A changed config cannot resume these checkpoints silently.
    (Path(cfg.out_dir) / "model.safetensors").unlink()
    with pytest.raises(SslseqError, match=r"differs in: optim\.lr"):
        Trainer(_cfg(tmp_path, tones, "killed", *over, "optim.lr=0.5"), model=FrameClassifier()).fit()


def test_resume_with_out_dir_spelled_differently(tmp_path, tones, monkeypatch):
    from sslseq.train.trainer import is_finished

    monkeypatch.chdir(tmp_path)
    over = ("optim.max_steps=8", "save_interval=4", "valid_interval=0")
    Trainer(_cfg(tmp_path, tones, "run", *over), model=FrameClassifier()).fit(stop_at_step=5)  # absolute out_dir
    model = FrameClassifier(seed=1)
    Trainer(_cfg(tmp_path, tones, "run", *over, "out_dir=./run"), model=model).fit()  # the same dir, relative
    assert model.updates == list(range(4, 8))  # resumed, not refused as "another config"
    for spelling in ("run", "run/../run/", str(tmp_path / "run")):
        assert is_finished(_cfg(tmp_path, tones, "run", *over, f"out_dir={spelling}"))
    assert not is_finished(_cfg(tmp_path, tones, "run", *over, "out_dir=run", "optim.lr=0.5"))
    (tmp_path / "run" / "model.safetensors").unlink()
    with pytest.raises(SslseqError, match=r"another config \(differs in: optim\.lr\)"):  # not out_dir
        Trainer(_cfg(tmp_path, tones, "run", *over, "optim.lr=0.5", "out_dir=../" + tmp_path.name + "/run"),
                model=FrameClassifier()).fit()


def test_checkpoint_files_load_without_code(tmp_path):
    m = FrameClassifier()
    np.random.seed(3)
    torch.manual_seed(3)
    state = {"step": 5, "rng": ckpt.get_rng_state(), "nested": {"x": [1, 2.5, None, "s"]}}
    path = ckpt.save_checkpoint(tmp_path / "c", 5, m, state, keep_last=1)
    ckpt.save_checkpoint(tmp_path / "c", 6, m, state, keep_last=1)
    assert not path.exists() and ckpt.latest_checkpoint(tmp_path / "c").name == "step_6"
    loaded = ckpt.load_trainer_state(tmp_path / "c" / "step_6")  # weights_only=True inside
    a = (torch.rand(3), np.random.rand(3))
    ckpt.set_rng_state(loaded["rng"])
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    m2 = FrameClassifier(seed=9)
    ckpt.load_weights(m2, tmp_path / "c" / "step_6" / ckpt.WEIGHTS)
    assert torch.equal(m2.conv.weight, m.conv.weight)
    torch.save({"bad": FrameClassifier}, tmp_path / "c" / "step_6" / ckpt.STATE)  # pickled code
    with pytest.raises(SslseqError, match="cannot read trainer state"):
        ckpt.load_trainer_state(tmp_path / "c" / "step_6")


def test_config_errors_name_nearest_keys(tmp_path, tones):
    with pytest.raises(SslseqError, match=r"optim\.lrr.*Did you mean: lr"):
        _cfg(tmp_path, tones, "x", "optim.lrr=1")
    p = tmp_path / "typo.yaml"
    p.write_text("task: pretrain\noptim:\n  max_stepz: 3\n")
    with pytest.raises(SslseqError, match="max_steps"):
        load_train_config(p, [])
    with pytest.raises(SslseqError, match="init=none"):
        load_train_config(CONF / "ctc_tiny.yaml", ["out_dir=x", "data.train=d"])
    # model_config is merged under model; model.* overrides win.
    cfg = load_train_config(CONF / "pretrain_hubert_tiny.yaml", ["out_dir=x", "data.train=d", "data.labels_train=a.km", "model.final_dim=32"])
    assert cfg.model["name"] == "hubert" and cfg.model["final_dim"] == 32 and cfg.model["encoder"]["encoder"]["num_layers"] == 4
    ctc = load_train_config(CONF / "ctc_tiny.yaml", ["out_dir=x", "data.train=d", "init=none"])
    assert "final_dim" not in ctc.model and ctc.model["encoder"] == cfg.model["encoder"]


def test_schedules():
    assert linear_lr(0, lr=1.0, warmup_steps=4, max_steps=12) == 0.25
    assert linear_lr(3, lr=1.0, warmup_steps=4, max_steps=12) == 1.0
    assert linear_lr(8, lr=1.0, warmup_steps=4, max_steps=12) == pytest.approx(0.5)
    assert linear_lr(12, lr=1.0, warmup_steps=4, max_steps=12) == 0.0
    kw = dict(lr=1.0, max_steps=100, phase_ratio=(0.1, 0.4, 0.5), init_lr_scale=0.01, final_lr_scale=0.05)
    assert tri_stage_lr(0, **kw) == pytest.approx(0.01 + 0.99 / 10)
    assert tri_stage_lr(9, **kw) == 1.0 and tri_stage_lr(49, **kw) == 1.0
    assert tri_stage_lr(50, **kw) == 1.0
    assert tri_stage_lr(75, **kw) == pytest.approx(math.sqrt(0.05))
    assert tri_stage_lr(100, **kw) == pytest.approx(0.05)
    decay = [tri_stage_lr(s, **kw) for s in range(50, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    o = OptimConfig(lr=2.0, schedule="tri_stage", max_steps=100)
    assert lr_at(30, o) == 2.0


class BlankCTC(nn.Module):
    """A CTC model with the trainer's contract whose output layer starts (and, at lr 0,
    stays) confidently blank: a strided conv at 50 Hz, a head biased to unit 0."""

    def __init__(self, vocab_size: int = 29):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 8, 400, stride=320)
        self.head = nn.Linear(8, vocab_size)
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()
            self.head.bias[0] = 10.0
        self.cfg = {"name": "blank_ctc", "vocab_size": vocab_size}
        self.frame_rate = 50.0

    def set_num_updates(self, step: int) -> None:
        pass

    def log_probs(self, wav, lens):
        x = self.head(torch.relu(self.conv(wav[:, None])).transpose(1, 2))
        return F.log_softmax(x.float(), -1), torch.where(lens >= 400, (lens - 400) // 320 + 1, 0)

    def forward(self, batch):
        lp, lens = self.log_probs(batch["wav"], batch["wav_lens"])
        valid = torch.arange(batch["targets"].size(1))[None, :] < batch["target_lens"][:, None]
        loss = F.ctc_loss(lp.transpose(0, 1), batch["targets"][valid], lens, batch["target_lens"],
                          reduction="sum", zero_infinity=True)
        return ModelOutput(loss, int(batch["target_lens"].sum()), {})


def test_ctc_validation_logs_blank_output_and_warns(tmp_path, tones):
    from sslseq.train import health

    # The tone corpus with transcripts; the first dev utterance's is longer than its 50 Hz frames.
    for name in ("train", "valid"):
        d = tmp_path / name
        d.mkdir()
        for f in ("wav.scp", "utt2spk", "utt2dur"):
            (d / f).write_text((tones[name] / f).read_text())
        utts = [line.split()[0] for line in (d / "wav.scp").read_text().splitlines()]
        (d / "text").write_text("".join(f"{u} {'AB CD' if i else 'A' * 200}\n" for i, u in enumerate(utts)))
    cfg = _cfg(tmp_path, tones, "ctc", "task=ctc", f"data.train={tmp_path / 'train'}", f"data.valid={tmp_path / 'valid'}",
               "init=none", "data.labels_train=null", "data.labels_valid=null", "optim.lr=0", "optim.max_steps=4",
               "optim.warmup_steps=1", "valid_interval=2", "save_interval=4", "data.max_sample_seconds=3")
    warnings = []
    real = health.HealthMonitor.check_valid

    def spy(self, step, result):
        warnings.extend(real(self, step, result))
        return warnings

    health.HealthMonitor.check_valid = spy
    try:
        out = Trainer(cfg, model=BlankCTC()).fit()
    finally:
        health.HealthMonitor.check_valid = real
    valid = [r for r in _jsonl(out) if "valid_loss" in r]
    assert [r["step"] for r in valid] == [2, 4]
    for r in valid:
        assert r["valid_blank_frac"] == 1.0 and r["valid_empty_frac"] == 1.0 and r["valid_cer"] == 1.0
        assert r["valid_short_frac"] == 0.25  # 1 of 4 dev utterances
    summary = yaml.safe_load((out / "train_summary.yaml").read_text())
    assert summary["final_valid"]["valid_blank_frac"] == 1.0 and summary["final_valid"]["valid_empty_frac"] == 1.0
    (msg,) = warnings  # step 2 and 4 are after warmup; the second is rate-limited
    assert msg.startswith("step 2: the dev output is still blank") and "25.0% of dev utterances" in msg


class AutocastProbe(FrameClassifier):
    """Records whether each forward ran inside a CPU bf16 autocast region."""

    def forward(self, batch):
        self.autocast = getattr(self, "autocast", []) + [torch.is_autocast_enabled("cpu")
                                                         and torch.get_autocast_dtype("cpu") == torch.bfloat16]
        return super().forward(batch)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process; tests that change it start
    and end with a clean state (a real run is one process with one setting)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_cpu_bf16_precision_trains_under_autocast(tmp_path, tones, fresh_accelerate_state):
    """precision=bf16 runs on the CPU (slow without native bf16: a few tiny steps only);
    precision=auto on this machine is what sslseq.hw detected."""
    from sslseq import hw

    model = AutocastProbe()
    out = Trainer(_cfg(tmp_path, tones, "bf16", "precision=bf16", "optim.max_steps=3", "valid_interval=3"), model=model).fit()
    rec = _jsonl(out)
    assert all(math.isfinite(r.get("loss", r.get("valid_loss"))) for r in rec) and model.autocast and all(model.autocast)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    model = AutocastProbe()
    Trainer(_cfg(tmp_path, tones, "auto", "precision=auto", "optim.max_steps=1", "valid_interval=0"), model=model).fit()
    assert model.autocast and set(model.autocast) == {hw.cpu_bf16().native}  # train and final valid steps


# ---------------------------------------------------------------- real models


def _random_labels(data_dir: Path, out: Path, k: int, seed: int) -> Path:
    from sslseq.data.kaldi import load_data_dir

    d = load_data_dir(data_dir)
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, k, expected_frames(int(round(d.utt2dur[u] * SR)), 100.0)) for u in d.utts]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{data_dir.name}.km").write_text("".join(" ".join(map(str, x.tolist())) + "\n" for x in labels))
    (out / f"{data_dir.name}.utts").write_text("".join(f"{u}\n" for u in d.utts))
    (out / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(k)))
    (out / "labels.yaml").write_text(yaml.safe_dump({"label_rate": 100.0, "k": k, "dim": 13}))
    return out / f"{data_dir.name}.km"


def test_hubert_then_ctc_on_tiny_corpus(tmp_path, tiny_data):
    from sslseq.models import load

    lab = tmp_path / "labels"
    km_train, km_dev = _random_labels(tiny_data / "train", lab, 20, 0), _random_labels(tiny_data / "dev", lab, 20, 1)
    small = ["data.max_batch_seconds=8", "max_valid_batches=1", "save_interval=1"]
    pre = train_from_config(
        CONF / "pretrain_hubert_tiny.yaml",
        [f"out_dir={tmp_path / 'hubert'}", f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}",
         f"data.labels_train={km_train}", f"data.labels_valid={km_dev}", "optim.max_steps=2",
         "data.max_sample_seconds=2", *small],
    )
    hub = load(pre)
    assert hub.cfg.num_classes == 20 and hub.cfg.label_rate == 100.0
    rec = _jsonl(pre)
    assert rec[-1]["step"] == 2 and math.isfinite(rec[-1]["valid_loss"])
    assert math.isfinite([r for r in rec if "loss" in r][-1]["loss"])

    ctc_over = [f"data.train={tiny_data / 'train'}", f"data.valid={tiny_data / 'dev'}", "optim.max_steps=2",
                "model.freeze_encoder_steps=1", "data.max_sample_seconds=8", *small]
    ft = train_from_config(CONF / "ctc_tiny.yaml", [f"out_dir={tmp_path / 'ctc'}", f"init={pre}", *ctc_over])
    ctc = load(ft)
    assert ctc.cfg.vocab_size == 29 and (ft / "units.txt").read_text().splitlines()[0] == "<blank>"
    # The encoder started from the pretrained one: the conv frontend (never trained in
    # fine-tuning, feature_grad_mult 0) is HuBERT's; the Transformer trained after step 0.
    hs, cs = hub.state_dict(), ctc.state_dict()
    front = [k for k in cs if k.startswith("encoder.feature_extractor.")]
    assert front and all(torch.equal(cs[k], hs[k]) for k in front)
    assert any(not torch.equal(cs[k], hs[k]) for k in cs if k.startswith("encoder.encoder.layers."))
    valid = [r for r in _jsonl(ft) if "valid_loss" in r][-1]
    assert 0.0 <= valid["valid_cer"] and 0.0 <= valid["valid_wer"]
    scratch = train_from_config(CONF / "ctc_tiny.yaml", [f"out_dir={tmp_path / 'scratch'}", "init=none", *ctc_over])
    assert load(scratch).cfg.vocab_size == 29


def test_best_checkpoint_replaced_atomically_and_restored_after_a_kill(tmp_path):
    root = tmp_path / "checkpoints"
    m = FrameClassifier()
    ckpt.save_best(root, m, {"metric": "valid_loss", "value": 2.0, "step": 10})
    ckpt.save_best(root, m, {"metric": "valid_loss", "value": 1.0, "step": 20})
    assert yaml.safe_load((root / "best" / "best.yaml").read_text())["step"] == 20
    assert sorted(p.name for p in root.iterdir()) == ["best"]  # no temp or old dirs left
    # killed between moving the old best aside and moving the new one in: the old one comes back
    (root / "best").rename(root / ".old_best_123")
    (root / ".tmp_best_x").mkdir()
    ckpt.remove_partial(root)
    assert sorted(p.name for p in root.iterdir()) == ["best"]
    assert yaml.safe_load((root / "best" / "best.yaml").read_text())["step"] == 20


def test_torch_compile_trains_like_eager(tmp_path, tones):
    """compile=true: the same losses as eager execution (to float tolerance), on the CPU's
    inductor backend, in fp32; precision=auto on a CPU is bf16 only with native bf16 units."""
    from sslseq import hw
    from sslseq.train.trainer import resolve_precision

    assert resolve_precision("auto", cpu=True) == ("bf16" if hw.cpu_bf16().native else "fp32")
    assert resolve_precision("bf16", cpu=True) == "bf16"
    over = ("optim.max_steps=3", "valid_interval=0", "precision=fp32")
    eager = Trainer(_cfg(tmp_path, tones, "eager", *over), model=FrameClassifier(dropout=0.0)).fit()
    compiled = Trainer(_cfg(tmp_path, tones, "compiled", *over, "compile=true"), model=FrameClassifier(dropout=0.0)).fit()
    le = [r["loss"] for r in _jsonl(eager) if "loss" in r]
    lc = [r["loss"] for r in _jsonl(compiled) if "loss" in r]
    assert len(le) == 3 and lc == pytest.approx(le, rel=1e-4)


def test_train_fingerprint_follows_what_the_run_trains(tmp_path):
    """A recipe stage marker holds this fingerprint (``sslseq train --fingerprint``): editing the
    model YAML a training YAML includes, the training YAML or an override must change it (the
    stage is redone); a comment or a key that cannot change the result must not."""
    from sslseq.train.config import resolve_train_config, train_fingerprint

    model, top = tmp_path / "model.yaml", tmp_path / "pretrain.yaml"

    def fp(*overrides: str) -> str:
        return train_fingerprint(resolve_train_config(top, list(overrides)))

    model.write_text("name: hubert\nencoder: {num_layers: 2}\n")
    top.write_text("task: pretrain\nmodel_config: model.yaml\n")
    before = fp()
    assert before == fp() and len(before) == 16
    top.write_text("# the recipe's pretraining\ntask: pretrain\nmodel_config: model.yaml\n")
    assert fp() == before and fp("log_interval=7", "device=cpu") == before
    model.write_text("name: hubert\nencoder: {num_layers: 3}\n")
    edited = fp()
    assert edited != before
    assert fp("seed=1") not in (before, edited) and fp("optim.max_steps=7") not in (before, edited)
    top.write_text("task: pretrain\nmodel_config: model.yaml\nseed: 1\n")
    assert fp() == fp("seed=1")
    top.write_text("task: pretrain\nmodel_config: missing.yaml\n")
    with pytest.raises(SslseqError, match="missing.yaml"):
        fp()


class NanAfter(FrameClassifier):
    """A model whose loss turns NaN from update ``start`` on (``every``: only on every n-th update),
    as a diverged run's does."""

    def __init__(self, start: int, every: int = 1):
        super().__init__(dropout=0.0)
        self.start, self.every = start, every

    def forward(self, batch):
        out = super().forward(batch)
        step = self.updates[-1]
        if step >= self.start and (step - self.start) % self.every == 0:
            out = ModelOutput(out.loss * float("nan"), out.sample_size, out.logs)
        return out


def test_nan_updates_in_a_row_stop_training_with_an_error(tmp_path, tones):
    cfg = _cfg(tmp_path, tones, "nan", "optim.max_steps=15", "valid_interval=2", "save_interval=2")
    # updates 1-2 are fine (validated at step 2), from update 3 on the loss is NaN
    with pytest.raises(SslseqError, match=r"training diverged at step 12: the last 10 updates were skipped "
                                          r"\(optim\.max_skipped_in_row=10\).*Lower optim\.lr"):
        Trainer(cfg, model=NanAfter(start=2)).fit()
    out = Path(cfg.out_dir)
    # nothing marks it finished, and the NaN validations (steps 4-10) never became the best model
    assert not (out / "train_summary.yaml").exists() and not (out / "model.safetensors").exists()
    assert yaml.safe_load((out / "checkpoints" / "best" / "best.yaml").read_text())["step"] == 2
    valid = [r["valid_loss"] for r in _jsonl(out) if "valid_loss" in r]
    assert len(valid) == 5 and math.isfinite(valid[0]) and all(math.isnan(v) for v in valid[1:])
    # skipped updates are logged per interval, the one that stopped training too
    assert [r["skipped_updates"] for r in _jsonl(out) if "skipped_updates" in r] == [0, 0] + [1] * 10
    state = ckpt.load_trainer_state(ckpt.latest_checkpoint(out / "checkpoints"))
    assert state["stats"]["best"]["step"] == 2 and state["stats"]["skipped_updates"] == 8  # steps 3-10


def test_too_many_skipped_updates_in_all_stop_training(tmp_path, tones):
    # every 2nd update NaN: never 10 in a row, but 11 of 21 skipped > max(10, 0.05 * 40)
    cfg = _cfg(tmp_path, tones, "nan2", "optim.max_steps=40", "valid_interval=0")
    with pytest.raises(SslseqError, match=r"11 of 21 updates were skipped, more than 10 \(optim\.max_skipped_frac"):
        Trainer(cfg, model=NanAfter(start=0, every=2)).fit()
    # the limits are configurable: a few skipped updates are counted in the summary, not fatal
    cfg = _cfg(tmp_path, tones, "nan3", "optim.max_steps=12", "optim.max_skipped_frac=1.0")
    Trainer(cfg, model=NanAfter(start=0, every=3)).fit()
    summary = yaml.safe_load((Path(cfg.out_dir) / "train_summary.yaml").read_text())
    assert summary["skipped_updates"] == 4 and math.isfinite(summary["best"]["value"])


def test_fp16_overflow_counts_as_skipped_only_below_a_loss_scale_of_one(tmp_path, tones):
    """fp16's loss scaler skips overflowing steps itself while it lowers its scale: those are not a
    diverged run until the scale is below 1 (a stand-in scaler: fp16 needs a GPU)."""
    t = _setup(_cfg(tmp_path, tones, "fp16"), NanAfter(start=0))

    class Scaler:
        scale_now = 4.0

        def scale(self, loss):
            return loss

        def get_scale(self):
            return self.scale_now

    scaler = t.accelerator.scaler = Scaler()

    def scaler_step():  # what GradScaler.step + update do with inf/nan gradients
        scaler.scale_now /= 2

    t.optimizer.step = scaler_step
    from sslseq.data.dataset import SpeechDataset

    ds = SpeechDataset(tones["train"], labels=tones["km"], max_sample_seconds=2.0)
    batch = collate([ds[(i, 0)] for i in range(2)])
    counted = []
    for _ in range(4):  # scale 4 -> 2 -> 1 -> 0.5 -> 0.25
        t.train_step([batch])
        counted.append(t.stats.get("skipped_updates", 0))
    assert counted == [0, 0, 1, 2]


def test_a_model_with_nan_validation_is_not_written_as_finished(tmp_path, tones):
    # the skip limits switched off: the run reaches its last step, whose validation is NaN
    cfg = _cfg(tmp_path, tones, "nanval", "optim.max_steps=4", "valid_interval=0", "optim.max_skipped_in_row=0",
               "optim.max_skipped_frac=1.0")
    with pytest.raises(SslseqError, match=r"the model after 4 steps is not usable: the final validation loss is nan"):
        Trainer(cfg, model=NanAfter(start=2)).fit()
    out = Path(cfg.out_dir)
    assert not (out / "train_summary.yaml").exists() and not (out / "model.safetensors").exists()


def test_update_freq_sized_for_more_processes():
    from sslseq.train.config import OptimConfig, effective_update_freq

    assert effective_update_freq(OptimConfig(update_freq=2), 4) == 2  # 0: as given
    assert [effective_update_freq(OptimConfig(update_freq=1, sized_for_processes=8), p) for p in (1, 2, 8)] == [8, 4, 1]
    assert effective_update_freq(OptimConfig(update_freq=2, sized_for_processes=8), 4) == 4
    with pytest.raises(SslseqError, match=r"sized for 8 processes, and 3 do not divide it; run on 1, 2, 4, 8 processes"):
        effective_update_freq(OptimConfig(sized_for_processes=8), 3)
