"""AttributeNet (ANet) vehicle re-identification: model, data, training and evaluation.

The library is plain PyTorch + numpy + pandas. MLflow, DVC, boto3 and Optuna are used only by
``anet.mlops`` and ``anet.mlops.storage.importer`` and are imported lazily; kfp is never imported here.
"""

__version__ = "0.1.0"
