"""The model contract of ``sslseq/models/base.py``: every registered model is a SpeechModel;
logs leave forward as detached tensors and reach the trainer as floats in one copy; and every
masked-prediction family, given a batch where nothing is masked, returns a zero loss whose
backward reaches every parameter a normal step reaches (as DDP needs)."""

from __future__ import annotations

import pytest
import torch

from sslseq.models import MODELS, SpeechModel, build_model, needs_labels
from sslseq.models.base import log_floats
from test_dinosr import dinosr_cfg
from test_models import batch as labelled_batch
from test_models import ctc_cfg, hubert_cfg, small_encoder
from test_w2vbert import small_w2vbert, wav_batch
from test_wav2vec2 import w2v_cfg

torch.set_num_threads(1)

NO_MASK = {"mask_prob": 1e-6, "mask_min_masks": 0}  # spans of p=1e-6 on a few hundred frames: none


def _families(no_mask: bool):
    """(name, model config, batch) of the small test models of each masked-prediction family."""
    enc = NO_MASK if no_mask else {}
    w2vbert = small_w2vbert()
    w2vbert["encoder"] = {**w2vbert["encoder"], **enc}
    return [
        ("hubert", hubert_cfg(encoder=small_encoder(**enc)), labelled_batch()),
        ("wav2vec2", w2v_cfg(encoder=small_encoder(**enc)), labelled_batch()),
        ("w2vbert", w2vbert, wav_batch()),
        ("dinosr", dinosr_cfg(encoder=small_encoder(extractor_mode="group_norm", **enc)), labelled_batch()),
    ]


def _reached(cfg, b) -> tuple[torch.nn.Module, set[str], object]:
    torch.manual_seed(0)
    model = build_model(cfg)
    out = model(b)
    out.loss.backward()
    return model, {n for n, p in model.named_parameters() if p.grad is not None}, out


@pytest.mark.parametrize("family", ["hubert", "wav2vec2", "w2vbert", "dinosr"])
def test_nothing_masked_keeps_every_parameter_of_a_normal_step_in_the_graph(family):
    (_, normal_cfg, b), = [f for f in _families(False) if f[0] == family]
    (_, empty_cfg, _), = [f for f in _families(True) if f[0] == family]
    _, normal, out = _reached(normal_cfg, b)
    assert out.sample_size > 0 and normal  # the normal step does predict frames
    model, empty, out = _reached(empty_cfg, b)
    assert out.sample_size == 0 and out.loss.item() == 0.0 and out.logs["loss"] == 0.0
    assert float(out.logs["n_masked"]) == 0.0
    missing = normal - empty
    assert not missing, f"{family}: no gradient for {sorted(missing)[:5]} when nothing is masked"
    assert all(float(p.grad.abs().max()) == 0.0 for n, p in model.named_parameters() if n in normal)


def test_every_registered_model_keeps_the_contract():
    for name, (_, cls) in MODELS.items():
        assert issubclass(cls, SpeechModel), name
    assert needs_labels({"name": "hubert"}) and not needs_labels({"name": "wav2vec2"})
    assert not needs_labels(build_model(dinosr_cfg()))
    model = build_model(ctc_cfg(upsample=2))
    assert model.frame_rate == 2 * model.encoder.frame_rate  # CTC outputs, not encoder frames
    model.set_num_updates(7)
    assert model.num_updates == 7


def test_logs_are_tensors_until_the_trainer_reads_them():
    torch.manual_seed(0)
    model = build_model(w2v_cfg())
    out = model(labelled_batch())
    tensors = {k for k, v in out.logs.items() if isinstance(v, torch.Tensor)}
    assert {"loss", "contrastive", "acc", "codebook_use"} <= tensors
    assert all(not out.logs[k].requires_grad for k in tensors)
    floats = log_floats(out.logs)
    assert list(floats) == list(out.logs) and all(type(v) is float for v in floats.values())
    assert floats["contrastive"] == out.logs["contrastive"].item()
    assert log_floats({"a": 1, "b": 2.5}) == {"a": 1.0, "b": 2.5}
