"""Every loss term, and the criteria that name them: ``paper`` holds the AttributeNet paper's terms
(eqs. 4, 9-13) and its :class:`Criterion`; ``fastreid`` holds FastReID's cross-entropy and triplet
variants and the criterion of the ``*-fastreid`` profiles. :func:`build_criterion` picks by ``loss.form``.

Example:
    >>> criterion = build_criterion(cfg.loss, cfg.model, amelioration=False)
    >>> terms = criterion(model(images), ids, {"color": color, "type": vtype})
"""

from anet.losses.fastreid import FastReIDCriterion, build_criterion
from anet.losses.paper import (
    Criterion,
    GlobalBatch,
    WeightedTerms,
    ac_id,
    ac_tri,
    attribute_ce,
    attribute_triplet,
    cross_entropy_ls,
    cross_entropy_ls_per_sample,
    euclidean_dist,
    gather_global,
    hard_mining,
    triplet_hard,
)

__all__ = ["Criterion", "FastReIDCriterion", "GlobalBatch", "WeightedTerms", "ac_id", "ac_tri", "attribute_ce",
           "attribute_triplet", "build_criterion", "cross_entropy_ls", "cross_entropy_ls_per_sample",
           "euclidean_dist", "gather_global", "hard_mining", "triplet_hard"]
