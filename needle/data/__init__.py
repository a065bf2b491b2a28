"""Datasets, data loaders and transforms."""
