"""Pretraining health warnings (sslseq.train.health): codebook collapse and loss stuck at chance."""

from __future__ import annotations

from sslseq.train.health import HealthMonitor


def test_codebook_collapse_warns_once_per_window():
    mon = HealthMonitor(warn_every=100)
    assert mon.check(10, {"codebook_use": 0.5}) == []
    (msg,) = mon.check(20, {"codebook_use": 0.05})
    assert "5.0% of the codebook" in msg and "model.diversity_weight" in msg
    assert mon.check(119, {"codebook_use": 0.01}) == []  # rate-limited
    assert len(mon.check(120, {"codebook_use": 0.01})) == 1


def test_loss_at_chance_after_warmup_for_patience_intervals():
    mon = HealthMonitor(warmup_steps=50, patience=3, warn_every=1000)
    at_chance = {"loss_bits": 4.39, "chance_bits": 4.392}
    for step in (10, 20, 30, 40, 50):  # warmup: never judged
        assert mon.check(step, at_chance) == []
    assert mon.check(60, at_chance) == [] and mon.check(70, at_chance) == []
    (msg,) = mon.check(80, at_chance)
    assert "stayed at the chance level" in msg and "3 logging intervals" in msg and "optim.lr" in msg


def test_learning_resets_the_chance_count():
    mon = HealthMonitor(patience=2)
    assert mon.check(10, {"loss_bits": 6.0, "chance_bits": 6.0}) == []
    assert mon.check(20, {"loss_bits": 5.0, "chance_bits": 6.0}) == []  # below chance: learning
    assert mon.check(30, {"loss_bits": 6.0, "chance_bits": 6.0}) == []
    assert len(mon.check(40, {"loss_bits": 6.1, "chance_bits": 6.0})) == 1


def test_records_without_health_keys_are_ignored():
    mon = HealthMonitor(patience=1)
    assert mon.check(10, {"loss": 3.0}) == []  # CTC fine-tuning logs neither key
