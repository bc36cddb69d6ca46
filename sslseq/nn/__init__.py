"""Shared building blocks: conv frontend, transformer layers, positional conv, span masking."""
