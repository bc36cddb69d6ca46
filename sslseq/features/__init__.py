"""Kaldi-compatible fbank / MFCC in torch, the sharded feature store, layer features."""
