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
* Under DDP the mined terms (``tri_f``, ``tri_j``, ``tri_g``, ``ac_tri``) see the GLOBAL batch, as the
  paper's batch argument needs (FastReID 1.4.0 has this gather commented out and mines per GPU): the embeddings, identities and attributes of every
  rank are all-gathered first (:func:`gather_global`), so a rank's anchors find positives and negatives
  in the other ranks' shares. The per-image terms (ID, attribute CE, AC_ID) stay on the local share:
  DDP's gradient average over equal shares already gives the global mean.

Example:
    >>> criterion = Criterion(cfg.loss, amelioration=False)
    >>> terms = criterion(model(images), ids, {"color": color, "type": vtype})
    >>> loss = sum(terms.values())     # every term is already weighted
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.distributed as dist
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


def attribute_ce(logits: torch.Tensor, target: torch.Tensor, labelled_per_rank: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """CE over samples with a label (target >= 0); exactly 0 with zero gradient when none is labelled.

    ``labelled_per_rank`` (DDP): the global batch's labelled count / world size, so that the ranks'
    average (what DDP's gradient average computes) is the global batch's mean over labelled images,
    however the labels are spread over the ranks; None = this batch's own count.
    """
    labelled = target >= 0  # B
    per_sample = F.cross_entropy(logits.float(), target.clamp(min=0), reduction="none")  # B
    if labelled_per_rank is None:
        return _masked_mean(per_sample, labelled)
    total = torch.where(labelled, per_sample, torch.zeros_like(per_sample)).sum()
    return total / labelled_per_rank.clamp(min=1e-12)


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


@dataclasses.dataclass(frozen=True)
class GlobalBatch:
    """What batch-hard mining needs, over every rank's images in rank order (this rank's alone without DDP).

    ``world`` is the number of ranks; ``attrs`` holds only the attributes the model predicts.
    """

    f_vec: torch.Tensor  # N x s_f (N = global batch)
    j_vec: torch.Tensor | None  # N x s_j
    g_vec: torch.Tensor | None  # N x c
    ids: torch.Tensor  # N
    attrs: dict[str, torch.Tensor]  # name -> N
    world: int = 1


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``scale``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None  # type: ignore[attr-defined]


def _all_gather_rows(x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    """Every rank's rows of ``x`` (B_r x d), concatenated in rank order; shares may differ in size.

    Gradient: ``dist.all_gather`` carries none, so this rank's own slot is the local tensor itself,
    wrapped to multiply its gradient by the world size. Every rank computes the same global-batch loss
    but back-propagates it only into its own rows; DDP then AVERAGES the ranks' parameter gradients,
    so the factor world size makes that average the sum over slots, i.e. the single-process gradient of
    the global loss (the differentiable ``torch.distributed.nn.all_gather`` would instead need an
    all-to-all in the backward).
    """
    world, longest = len(sizes), max(sizes)
    padded = torch.cat([x.detach(), x.new_zeros((longest - len(x), *x.shape[1:]))]) if len(x) < longest \
        else x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    rows = [part[:n] for part, n in zip(parts, sizes, strict=True)]
    rows[rank] = _ScaleGrad.apply(x, float(world)) if x.requires_grad else x
    return torch.cat(rows)


def gather_global(out: ANetOutput, ids: torch.Tensor, attrs: Mapping[str, torch.Tensor]) -> GlobalBatch:
    """The global batch of the mined terms: one all-gather of the sizes, one of the packed embeddings
    (f_vec | j_vec | g_vec), one of the packed labels (ids | attributes); no copy without DDP."""
    names = [n for n in sorted(out.a_logits) if n in attrs]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return GlobalBatch(out.f_vec, out.j_vec, out.g_vec, ids, {n: attrs[n] for n in names})
    rank, world = dist.get_rank(), dist.get_world_size()
    count = torch.tensor([len(ids)], dtype=torch.long, device=ids.device)  # 1
    counts = [torch.empty_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    vecs = [v for v in (out.f_vec, out.j_vec, out.g_vec) if v is not None]
    widths = [v.shape[1] for v in vecs]
    gathered = _all_gather_rows(torch.cat(vecs, dim=1), sizes, rank).split(widths, dim=1)  # N x (s_f+s_j+c)
    labels = _all_gather_rows(torch.stack([ids, *(attrs[n] for n in names)], dim=1), sizes, rank)  # N x (1+n)
    f_vec, j_vec, g_vec = gathered[0], *(gathered[1:] if out.j_vec is not None else (None, None))
    return GlobalBatch(f_vec, j_vec, g_vec, labels[:, 0], {n: labels[:, i + 1] for i, n in enumerate(names)},
                       world)


class WeightedTerms(dict):
    """Weighted loss terms by name (what the engine sums) plus each term's raw, unweighted value.

    ``raw[name]`` is the term before its lambda (detached), so ``train/raw/tri_f`` can be compared
    across sweep trials with different lambdas while ``train/tri_f`` is what the optimiser saw.
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}  # detached diagnostics, never summed (anet.train.diagnostics)

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
        for name in out.a_logits:
            if name not in attrs:
                raise UserError(f"attribute {name!r} is predicted by the model but missing from the batch "
                                f"(batch has: {', '.join(attrs) or 'none'}); check data.attributes")
        glob = gather_global(out, ids, attrs)  # the mined terms see every rank's images (module doc)
        terms = WeightedTerms()
        if not self.amelioration:
            terms.add("tri_f", w_van, triplet_hard(glob.f_vec, glob.ids, cfg.triplet_margin, cfg.soft_margin))
            terms.add("id_f", w_van, cross_entropy_ls(out.f_logits, ids, cfg.label_smoothing))
        for name, logits in out.a_logits.items():
            per_rank = (glob.attrs[name] >= 0).sum() / glob.world if glob.world > 1 else None
            terms.add(f"att/{name}", w_van * cfg.lambda_a, attribute_ce(logits, attrs[name], per_rank))
        if has_joint:
            assert out.j_logits is not None and glob.g_vec is not None and glob.j_vec is not None
            terms.add("tri_j", 1.0, triplet_hard(glob.j_vec, glob.ids, cfg.triplet_margin, cfg.soft_margin))
            terms.add("id_j", 1.0, cross_entropy_ls(out.j_logits, ids, cfg.label_smoothing))
            terms.add("tri_g", cfg.lambda_g, attribute_triplet(glob.g_vec, glob.attrs, cfg.triplet_margin,
                                                                cfg.soft_margin))
            terms.stats["share_j_better"] = _share_j_better(out.f_logits, out.j_logits, ids, cfg.label_smoothing)
        if self.amelioration:
            terms.add("ac_tri", 1.0, ac_tri(glob.f_vec, glob.j_vec, glob.ids))
            terms.add("ac_id", 1.0, ac_id(out.f_logits, out.j_logits, ids, cfg.label_smoothing))
        return terms


def _share_j_better(f_logits: torch.Tensor, j_logits: torch.Tensor, ids: torch.Tensor, epsilon: float
                    ) -> torch.Tensor:
    """Share of this batch's images with L_ID^j(I) < L_ID^f(I) (the per-image losses AC_ID compares)."""
    with torch.no_grad():
        ce_j = cross_entropy_ls_per_sample(j_logits, ids, epsilon)  # B
        ce_f = cross_entropy_ls_per_sample(f_logits, ids, epsilon)  # B
        return (ce_j < ce_f).float().mean()
