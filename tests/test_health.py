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


def test_ctc_dev_output_still_blank_after_warmup_and_freeze():
    mon = HealthMonitor(warmup_steps=100, freeze_steps=300, warn_every=1000)
    blank = {"valid_blank_frac": 1.0, "valid_empty_frac": 1.0, "valid_short_frac": 0.0}
    assert mon.check_valid(200, blank) == []  # the encoder is still frozen: expected
    assert mon.check_valid(300, blank) == []
    (msg,) = mon.check_valid(400, blank)
    assert "still blank (100.0% blank frames, 100.0% empty hypotheses)" in msg
    for cause in ("optim.max_steps", "optim.lr", "model.freeze_encoder_steps", "model.mask_prob", "frame rate"):
        assert cause in msg
    assert "fewer output frames" not in msg
    assert mon.check_valid(1399, blank) == []  # rate-limited
    (msg,) = mon.check_valid(1400, {**blank, "valid_empty_frac": 0.5, "valid_short_frac": 0.25})
    assert "25.0% of dev utterances have fewer output frames than their transcript needs" in msg


def test_ctc_dev_output_that_left_the_blank_stage_is_fine():
    mon = HealthMonitor(patience=1)
    assert mon.check_valid(10, {"valid_blank_frac": 0.9, "valid_empty_frac": 0.2}) == []
    assert len(mon.check_valid(20, {"valid_blank_frac": 0.95, "valid_empty_frac": 0.995})) == 1  # either one
    assert mon.check_valid(30, {"valid_loss": 1.0}) == []  # pretraining: no CTC keys
