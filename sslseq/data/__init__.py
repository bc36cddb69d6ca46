"""Kaldi data dirs, corpus preparation, text units and batching."""
