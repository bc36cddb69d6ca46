"""Offline k-means targets: fit, label, quality metrics."""
