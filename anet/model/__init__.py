"""AttributeNet model: ResNet-IBN-a backbone, VAN heads, joint module, stage-two freezing.

See :mod:`anet.model.anet` for the paper-to-code table.

Example:
    >>> from anet.model import build_model
    >>> model = build_model(cfg.model, num_ids=576, attr_classes={"color": 10, "type": 9})
"""

from anet.model.anet import ANet, ANetOutput, build_model
from anet.model.backbone import ResNetIBN, build_backbone
from anet.model.freeze import freeze_for_amelioration, set_train_mode
from anet.model.weights import load_backbone_weights

__all__ = [
    "ANet",
    "ANetOutput",
    "ResNetIBN",
    "build_backbone",
    "build_model",
    "freeze_for_amelioration",
    "load_backbone_weights",
    "set_train_mode",
]
