"""Losses of AttributeNet (eqs. 4, 9-13) and the criterion that turns an ANetOutput into named terms.

Conventions (Bag-of-Tricks, paper section 4.2):

* Triplet losses use the pre-BNNeck vectors (``f_vec``, ``j_vec``, ``g_vec``), batch-hard mining and
  Euclidean distance; ``soft=True`` replaces the hinge by softplus (soft margin).
* ID cross-entropy uses the logits from the post-BNNeck vectors, with label smoothing epsilon.
  Attribute cross-entropy is plain CE (label smoothing is an identity-classifier regulariser; the
  paper's LS ablation, Table 6, is about the ID loss) and ignores samples labelled -1.
* AC_tri (eq. 12) compares the SAME pair (I, I+) and (I, I-) in both spaces, so I+ and I- are mined
  once, batch-hard in the f space, and the distances D(j(I), j(I+)) and D(f(I), f(I+)) are taken for
  that pair. f is the frozen reference in stage two, so mining there gives fixed, meaningful
  "hard for f" pairs on which j must do better; mining independently in each space would compare
  distances of different pairs and the constraint would lose its meaning.

Example:
    >>> criterion = Criterion(cfg.loss, amelioration=False)
    >>> terms = criterion(model(images), ids, {"color": color, "type": vtype})
    >>> loss = sum(terms.values())     # every term is already weighted
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from anet.config import LossCfg
from anet.errors import UserError
from anet.model.anet import ANetOutput


def cross_entropy_ls_per_sample(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Per-sample label-smoothed CE (B): (1 - eps) * -log p_y + eps * mean_k(-log p_k)."""
    log_p = F.log_softmax(logits.float(), dim=1)  # B x K (float32 also under autocast)
    nll = -log_p.gather(1, target[:, None]).squeeze(1)  # B
    return (1.0 - epsilon) * nll + epsilon * (-log_p.mean(dim=1))


def cross_entropy_ls(logits: torch.Tensor, target: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Mean label-smoothed CE; ``epsilon=0`` is plain cross-entropy."""
    return cross_entropy_ls_per_sample(logits, target, epsilon).mean()


def euclidean_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances (N x M), clamped before sqrt so the gradient stays finite.

    Computed in float32 with autocast off: in bf16 the expansion |x|^2 + |y|^2 - 2xy loses the small
    distances that batch-hard mining is about.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        d2 = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :] - 2.0 * x @ y.t()  # N x M
        return d2.clamp(min=1e-12).sqrt()


def hard_mining(dist: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard mining: per anchor, the farthest positive (not itself) and the closest negative.

    ``labels`` is B (identities) or B x n (attribute tuples, equal only when all n entries are equal).
    Samples outside ``keep`` (B bool) are neither anchors nor candidates. Returns
    ``(pos_idx, neg_idx, valid)`` (each B); ``valid`` is False for anchors without any other positive
    or without any negative, which every loss skips. No host sync (no data-dependent shapes).
    """
    same = labels[:, None] == labels[None, :]  # B x B (x n)
    same = same.all(dim=2) if same.dim() == 3 else same  # B x B
    n = len(labels)
    keep = torch.ones(n, dtype=torch.bool, device=labels.device) if keep is None else keep
    pair = keep[:, None] & keep[None, :] & ~torch.eye(n, dtype=torch.bool, device=labels.device)  # B x B
    pos_mask, neg_mask = same & pair, ~same & pair
    d = dist.detach()
    pos_idx = d.masked_fill(~pos_mask, float("-inf")).argmax(dim=1)  # B
    neg_idx = d.masked_fill(~neg_mask, float("inf")).argmin(dim=1)  # B
    return pos_idx, neg_idx, keep & pos_mask.any(1) & neg_mask.any(1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask``; exactly 0 with zero gradient when the mask is empty."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


def triplet_hard(feats: torch.Tensor, labels: torch.Tensor, margin: float, soft: bool = False,
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """Batch-hard triplet loss, mean over valid anchors: relu(d_ap - d_an + margin) or softplus(d_ap - d_an).

    ``labels``/``keep`` as in :func:`hard_mining`; 0 (zero gradient) when no anchor is valid.
    """
    dist = euclidean_dist(feats, feats)  # B x B
    pos_idx, neg_idx, valid = hard_mining(dist, labels, keep)
    rows = torch.arange(len(labels), device=feats.device)
    diff = dist[rows, pos_idx] - dist[rows, neg_idx]  # B
    per_anchor = F.softplus(diff) if soft else F.relu(diff + margin)  # B
    return _masked_mean(per_anchor, valid)


def attribute_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE over samples with a label (target >= 0); exactly 0 with zero gradient when none is labelled."""
    labelled = target >= 0  # B
    per_sample = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")  # B
    return _masked_mean(per_sample, labelled)


def attribute_triplet(g_vec: torch.Tensor, attrs: Mapping[str, torch.Tensor], margin: float,
                      soft: bool = False) -> torch.Tensor:
    """Attribute-based triplet L_tri^g (eq. 9) on g_vec; label = the tuple of ALL attribute classes.

    Samples with any missing attribute (-1) are left out; anchors without a valid positive or negative
    are skipped; exactly 0 (zero gradient) when nothing is left.
    """
    if not attrs:
        return g_vec.sum() * 0.0
    patterns = torch.stack([attrs[name] for name in sorted(attrs)], dim=1)  # B x n
    complete = (patterns >= 0).all(dim=1)  # B
    return triplet_hard(g_vec, patterns, margin, soft, keep=complete)


def ac_id(f_logits: torch.Tensor, j_logits: torch.Tensor, ids: torch.Tensor, epsilon: float) -> torch.Tensor:
    """AC_ID (eq. 11): mean over images of softplus(L_ID^j(I) - L_ID^f(I)), label-smoothed per-image CE."""
    ce_j = cross_entropy_ls_per_sample(j_logits, ids, epsilon)  # B
    ce_f = cross_entropy_ls_per_sample(f_logits, ids, epsilon)  # B
    return F.softplus(ce_j - ce_f).mean()


def ac_tri(f_vec: torch.Tensor, j_vec: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """AC_tri (eq. 12), mean over valid anchors; I+ / I- mined batch-hard in the f space (module doc)."""
    dist_f = euclidean_dist(f_vec, f_vec)  # B x B
    dist_j = euclidean_dist(j_vec, j_vec)  # B x B
    pos_idx, neg_idx, valid = hard_mining(dist_f, ids)
    rows = torch.arange(len(ids), device=f_vec.device)
    pos_term = F.softplus(dist_j[rows, pos_idx] - dist_f[rows, pos_idx])  # B
    neg_term = F.softplus(dist_f[rows, neg_idx] - dist_j[rows, neg_idx])  # B
    return _masked_mean(pos_term + neg_term, valid)


class WeightedTerms(dict):
    """Weighted loss terms by name (what the engine sums) plus each term's raw, unweighted value.

    ``raw[name]`` is the term before its lambda (detached), so ``train/raw/tri_f`` can be compared
    across sweep trials with different lambdas while ``train/tri_f`` is what the optimiser saw.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw: dict[str, torch.Tensor] = {}

    def add(self, name: str, weight: float, raw: torch.Tensor) -> None:
        """Store ``weight * raw`` under ``name`` and the raw value beside it."""
        self[name] = weight * raw
        self.raw[name] = raw.detach()


class Criterion:
    """L (eq. 10) in stage one, L' (eq. 13) with ``amelioration=True``; returns weighted terms by name.

    Terms (only those that exist for the model's outputs):

    * ``tri_f``, ``id_f``: lambda_van * L_tri^f, lambda_van * L_ID^f (absent in stage two, eq. 13);
    * ``att/<name>``: lambda_van * lambda_a * L_att^i (eq. 4 inside eq. 10);
    * ``tri_j``, ``id_j``, ``tri_g``: L_tri^j, L_ID^j, lambda_g * L_tri^g (eq. 9);
    * ``ac_id``, ``ac_tri``: stage two only (eqs. 11-12).

    lambda_van balances L_VAN against L_JM (eq. 10), so it only applies when the model has a joint
    module; for ``baseline`` and ``van`` the loss is L_VAN itself (weight 1).
    """

    def __init__(self, loss_cfg: LossCfg, amelioration: bool = False) -> None:
        self.cfg = loss_cfg
        self.amelioration = amelioration

    def __call__(self, out: ANetOutput, ids: torch.Tensor, attrs: Mapping[str, torch.Tensor]
                 ) -> WeightedTerms:
        cfg, has_joint = self.cfg, out.j_vec is not None
        w_van = cfg.lambda_van if has_joint else 1.0
        if self.amelioration and not has_joint:
            raise UserError("stage_two.amelioration=true needs model.variant anet or anet_att "
                            "(AC compares j with f); set stage_two.amelioration=false")
        terms = WeightedTerms()
        if not self.amelioration:
            terms.add("tri_f", w_van, triplet_hard(out.f_vec, ids, cfg.triplet_margin, cfg.soft_margin))
            terms.add("id_f", w_van, cross_entropy_ls(out.f_logits, ids, cfg.label_smoothing))
        for name, logits in out.a_logits.items():
            if name not in attrs:
                raise UserError(f"attribute {name!r} is predicted by the model but missing from the batch "
                                f"(batch has: {', '.join(attrs) or 'none'}); check data.attributes")
            terms.add(f"att/{name}", w_van * cfg.lambda_a, attribute_ce(logits, attrs[name]))
        if has_joint:
            assert out.j_logits is not None and out.g_vec is not None
            terms.add("tri_j", 1.0, triplet_hard(out.j_vec, ids, cfg.triplet_margin, cfg.soft_margin))
            terms.add("id_j", 1.0, cross_entropy_ls(out.j_logits, ids, cfg.label_smoothing))
            pattern_attrs = {n: attrs[n] for n in out.a_logits}
            terms.add("tri_g", cfg.lambda_g, attribute_triplet(out.g_vec, pattern_attrs, cfg.triplet_margin,
                                                                cfg.soft_margin))
        if self.amelioration:
            terms.add("ac_tri", 1.0, ac_tri(out.f_vec, out.j_vec, ids))
            terms.add("ac_id", 1.0, ac_id(out.f_logits, out.j_logits, ids, cfg.label_smoothing))
        return terms
