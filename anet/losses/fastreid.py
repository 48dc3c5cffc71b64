"""FastReID's loss functions (``fastreid.modeling.losses`` 1.4.0), equal on the same inputs.

* :func:`cross_entropy` = ``cross_entropy_loss``: smoothing puts ``eps / (K - 1)`` on every wrong class
  and ``1 - eps`` on the right one (not ``eps / K`` everywhere, as :func:`anet.losses.paper.cross_entropy_ls`),
  and divides the summed loss by the number of non-zero per-sample terms.
* :func:`triplet_loss` = ``triplet_loss``: Euclidean (or, ``norm_feat``, cosine ``2 - 2 cos``) distances;
  ``hard_mining=True``: hardest positive (the anchor itself included, at distance 1e-6) and hardest
  negative; ``False``: softmax-weighted positives and negatives (FastReID's weighted example mining);
  ``margin > 0``: margin ranking, ``margin == 0``: soft margin ``log(1 + exp(d_ap - d_an))``, mean over
  the batch.

:class:`FastReIDCriterion` is :class:`anet.losses.paper.Criterion` (same term names, same lambdas, same AC
stage) with FastReID's forms for the identity terms: ``id_f`` / ``id_j`` are FastReID's CE on the
head's classifier output (CircleSoftmax or scaled linear), ``tri_f`` / ``tri_j`` its triplet loss.
The attribute terms stay ANet's (plain CE; L_tri^g batch-hard on attribute patterns, with the recipe's
margin, soft when it is 0), and AC_ID compares the per-image CE of the classifier outputs. Like
FastReID's own triplet, the mining sees this rank's batch only.

Example:
    >>> loss = triplet_loss(f_vec, ids, margin=0.0, norm_feat=False, hard_mining=True)
    >>> loss = cross_entropy(circle_logits, ids, eps=0.1)
    >>> terms = build_criterion(cfg.loss, cfg.model, amelioration=False)(model(images), ids, attrs)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from anet.config import LossCfg, ModelCfg
from anet.errors import UserError
from anet.losses.paper import Criterion, WeightedTerms, ac_id, ac_tri, attribute_ce, attribute_triplet
from anet.model.anet import ANetOutput
from anet.model.fastreid_blocks import cls_outputs


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


class FastReIDCriterion:
    """ANet's L / L' (eqs. 10, 13) with FastReID's identity losses (module doc); returns weighted terms."""

    def __init__(self, loss_cfg: LossCfg, model_cfg: ModelCfg, amelioration: bool = False) -> None:
        self.cfg, self.head, self.amelioration = loss_cfg, model_cfg.head, amelioration

    def _id(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The CE input FastReID's head computes from the logits (CircleSoftmax or ``scale * logits``)."""
        return cls_outputs(logits, ids, self.head.cls_layer, self.head.scale, self.head.margin)

    def _tri(self, vec: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return triplet_loss(vec, ids, self.cfg.triplet_margin, self.cfg.triplet_norm_feat,
                            self.cfg.triplet_hard_mining)

    def __call__(self, out: ANetOutput, ids: torch.Tensor, attrs: Mapping[str, torch.Tensor]) -> WeightedTerms:
        cfg, has_joint = self.cfg, out.j_vec is not None
        w_van = cfg.lambda_van if has_joint else 1.0
        if self.amelioration and not has_joint:
            raise UserError("stage_two.amelioration=true needs model.variant anet or anet_att "
                            "(AC compares j with f); set stage_two.amelioration=false")
        missing = [name for name in out.a_logits if name not in attrs]
        if missing:
            raise UserError(f"attribute {missing[0]!r} is predicted by the model but missing from the batch "
                            f"(batch has: {', '.join(attrs) or 'none'}); check data.attributes")
        terms = WeightedTerms()
        f_cls = self._id(out.f_logits, ids)
        if not self.amelioration:
            terms.add("tri_f", w_van, self._tri(out.f_vec, ids))
            terms.add("id_f", w_van, cross_entropy(f_cls, ids, cfg.label_smoothing))
        for name, logits in out.a_logits.items():
            terms.add(f"att/{name}", w_van * cfg.lambda_a, attribute_ce(logits, attrs[name]))
        if has_joint:
            assert out.j_logits is not None and out.g_vec is not None and out.j_vec is not None
            j_cls = self._id(out.j_logits, ids)
            terms.add("tri_j", 1.0, self._tri(out.j_vec, ids))
            terms.add("id_j", 1.0, cross_entropy(j_cls, ids, cfg.label_smoothing))
            pattern_attrs = {n: attrs[n] for n in out.a_logits}
            terms.add("tri_g", cfg.lambda_g, attribute_triplet(out.g_vec, pattern_attrs, cfg.triplet_margin,
                                                                soft=cfg.triplet_margin == 0.0))
            if self.amelioration:
                terms.add("ac_tri", 1.0, ac_tri(out.f_vec, out.j_vec, ids))
                terms.add("ac_id", 1.0, ac_id(f_cls, j_cls, ids, cfg.label_smoothing))
        return terms


def build_criterion(loss_cfg: LossCfg, model_cfg: ModelCfg, amelioration: bool = False
                    ) -> Callable[[ANetOutput, torch.Tensor, Mapping[str, torch.Tensor]], WeightedTerms]:
    """``loss.form``'s criterion: ANet's :class:`~anet.losses.paper.Criterion` or :class:`FastReIDCriterion`."""
    if loss_cfg.form == "fastreid":
        return FastReIDCriterion(loss_cfg, model_cfg, amelioration)
    return Criterion(loss_cfg, amelioration=amelioration)
