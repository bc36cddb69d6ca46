"""The trainer's task seams (sslseq/train/tasks.py): one object per task, the label fields of
``model:`` set in one explicit step, the CTC loss shared with validation."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from sslseq.models.ctc import TOP_LEVEL_FT_FIELDS, ctc_loss, without_top_level_ft
from sslseq.train import tasks, trainer
from sslseq.train.config import TrainConfig
from sslseq.utils import SslseqError


def test_task_chosen_once_and_trainer_has_no_task_branches():
    assert isinstance(tasks.make_task(TrainConfig(task="pretrain")), tasks.PretrainTask)
    assert isinstance(tasks.make_task(TrainConfig(task="ctc", init="none")), tasks.CtcTask)
    src = inspect.getsource(trainer)
    assert "cfg.task ==" not in src and "_TOP_LEVEL_FT" not in src


def test_with_label_fields_is_a_copy_and_warns(monkeypatch):
    warned = []
    monkeypatch.setattr(tasks.log, "warning", lambda msg, *a: warned.append(msg % a))
    given = {"name": "hubert", "label_rate": 100.0}
    out = tasks.with_label_fields(given, 50, 25.0, source="dump/labels/train.km")
    assert out == {"name": "hubert", "label_rate": 25.0, "num_classes": 50}
    assert given == {"name": "hubert", "label_rate": 100.0}  # the config's model section is not touched
    assert warned == ["model.label_rate=100.0 replaced by 25.0 from the labels (dump/labels/train.km)"]
    warned.clear()
    tasks.with_label_fields(out, 50, 25.0, source="x")
    assert warned == []


def test_ctc_loss_is_the_flattened_torch_loss():
    torch.manual_seed(0)
    lp = torch.randn(2, 12, 5).log_softmax(-1)
    lens = torch.tensor([12, 9])
    targets = torch.tensor([[1, 2, 2], [3, 0, 0]])
    target_lens = torch.tensor([3, 1])
    ref = F.ctc_loss(lp.transpose(0, 1), torch.tensor([1, 2, 2, 3]), lens, target_lens, reduction="sum",
                     zero_infinity=True)
    assert torch.equal(ctc_loss(lp, lens, targets, target_lens, blank=0), ref)


def test_without_top_level_ft():
    enc = {"frontend": "conv", "mask_prob": 0.1, "encoder": {"layers": 2, "dropout": 0.1}}
    assert without_top_level_ft(enc) == {"frontend": "conv", "encoder": {"layers": 2}}
    assert "mask_prob" in TOP_LEVEL_FT_FIELDS and enc["mask_prob"] == 0.1  # not mutated


def test_resolve_device():
    assert trainer._resolve_device("cpu") is True
    if not torch.cuda.is_available():
        assert trainer._resolve_device("auto") is True
        with pytest.raises(SslseqError, match="device=cuda but no CUDA GPU is visible"):
            trainer._resolve_device("cuda")
