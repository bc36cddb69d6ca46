"""Trainer, schedules, checkpoints, logging."""
