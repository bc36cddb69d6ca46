"""Shared building blocks: conv and fbank frontends, transformer and conformer layers, positional conv, span masking."""
