"""FastReID's loss functions (``fastreid.modeling.losses`` 1.4.0), equal on the same inputs.

* :func:`cross_entropy` = ``cross_entropy_loss``: smoothing puts ``eps / (K - 1)`` on every wrong class
  and ``1 - eps`` on the right one (not ``eps / K`` everywhere, as :func:`anet.losses.cross_entropy_ls`),
  and divides the summed loss by the number of non-zero per-sample terms.
* :func:`triplet_loss` = ``triplet_loss``: Euclidean (or, ``norm_feat``, cosine ``2 - 2 cos``) distances;
  ``hard_mining=True``: hardest positive (the anchor itself included, at distance 1e-6) and hardest
  negative; ``False``: softmax-weighted positives and negatives (FastReID's weighted example mining);
  ``margin > 0``: margin ranking, ``margin == 0``: soft margin ``log(1 + exp(d_ap - d_an))``, mean over
  the batch.

Example:
    >>> loss = triplet_loss(f_vec, ids, margin=0.0, norm_feat=False, hard_mining=True)
    >>> loss = cross_entropy(circle_logits, ids, eps=0.1)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
    """FastReID's label-smoothed CE (``eps >= 0``), in float32 under autocast."""
    log_probs = F.log_softmax(logits.float(), dim=1)  # B x K
    with torch.no_grad():
        soft = torch.full_like(log_probs, eps / (log_probs.shape[1] - 1))
        soft.scatter_(1, targets[:, None], 1.0 - eps)
    per_sample = (-soft * log_probs).sum(dim=1)  # B
    nonzero = (per_sample != 0).sum().clamp(min=1)
    return per_sample.sum() / nonzero


def _distances(embedding: torch.Tensor, norm_feat: bool) -> torch.Tensor:
    with torch.autocast(device_type=embedding.device.type, enabled=False):
        x = embedding.float()
        if norm_feat:
            x = F.normalize(x, dim=1)
            return 2 - 2 * x @ x.t()  # N x N
        sq = x.pow(2).sum(1, keepdim=True)  # N x 1
        return (sq + sq.t() - 2 * x @ x.t()).clamp(min=1e-12).sqrt()  # N x N


def _softmax_weights(dist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    max_v = (dist * mask).max(dim=1, keepdim=True)[0]
    diff = dist - max_v
    z = (diff.exp() * mask).sum(dim=1, keepdim=True) + 1e-6  # no division by zero
    return diff.exp() * mask / z


def triplet_loss(embedding: torch.Tensor, targets: torch.Tensor, margin: float, norm_feat: bool,
                 hard_mining: bool) -> torch.Tensor:
    """FastReID's triplet loss over the batch (module doc); ``embedding`` B x D, ``targets`` B."""
    dist = _distances(embedding, norm_feat)  # N x N
    same = targets[:, None] == targets[None, :]
    is_pos, is_neg = same.float(), (~same).float()
    if hard_mining:
        dist_ap = (dist * is_pos).max(dim=1)[0]  # N
        dist_an = (dist * is_neg + is_pos * 1e9).min(dim=1)[0]  # N
    else:
        d_ap, d_an = dist * is_pos, dist * is_neg
        dist_ap = (d_ap * _softmax_weights(d_ap, is_pos)).sum(dim=1)  # N
        dist_an = (d_an * _softmax_weights(-d_an, is_neg)).sum(dim=1)  # N
    y = torch.ones_like(dist_an)
    if margin > 0:
        return F.margin_ranking_loss(dist_an, dist_ap, y, margin=margin)
    loss = F.soft_margin_loss(dist_an - dist_ap, y)
    if torch.isinf(loss):  # FastReID's fallback when exp overflows
        loss = F.margin_ranking_loss(dist_an, dist_ap, y, margin=0.3)
    return loss
