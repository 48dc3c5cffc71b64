"""Datasets: readers -> manifest, synthetic data, prepared cache, PK sampler, batches, augmentation."""
