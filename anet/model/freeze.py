"""Stage-two rule: freeze everything that computes f (paper section 3.2, before eq. 13).

Why: the Amelioration Constraint compares j with f (eqs. 11-12: softplus(L_ID^j - L_ID^f),
softplus(D_j(I, I+) - D_f(I, I+)) + softplus(D_f(I, I-) - D_j(I, I-))). If f could still move, the
cheapest way to lower AC would be to make f *worse* (raise L_ID^f, shrink the f-space margins) instead
of making j better, and L' no longer trains f (eq. 13 removes L_tri^f and L_ID^f), so nothing would
stop it. Freezing the backbone and the whole f head (FC, BNNeck incl. running statistics, ID
classifier) keeps f a fixed reference, so AC can only be lowered by improving j. The attribute
branches, the joint module and the j head stay trainable.
"""

from __future__ import annotations

from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d)


def freeze_for_amelioration(model: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on ``model.backbone`` and ``model.f_head``; return the frozen names.

    Call :func:`set_train_mode` instead of ``model.train()`` afterwards so frozen norm layers keep
    their running statistics.

    Example:
        >>> frozen = freeze_for_amelioration(model)   # ["backbone.conv1.weight", ...]
        >>> set_train_mode(model)
    """
    frozen: list[str] = []
    for prefix in ("backbone", "f_head"):
        part = getattr(model, prefix)
        for name, param in part.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{prefix}.{name}")
    return frozen


def set_train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, then put back into eval mode every norm layer whose parameters are all frozen.

    A frozen BatchNorm in train mode would still update its running mean/var (and normalise with batch
    statistics), so f would drift although no parameter changes. Norm layers with any trainable
    parameter (e.g. a BNNeck, whose bias alone is always frozen) stay in train mode.
    """
    model.train()
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _NORMS) and params and not any(p.requires_grad for p in params):
            module.eval()
    return model
