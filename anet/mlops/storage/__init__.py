"""Data and weights in storage: DVC (``dvc``), S3 (``s3``), ``anet data import`` (``importer``),
pretrained weights (``pretrained``).
"""
