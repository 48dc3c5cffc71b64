"""What AC does in stage two: per-epoch diagnostics logged beside the loss terms.

The engine calls :class:`EpochDiagnostics` once per epoch; its values join the epoch's terms, so they
reach MLflow (``train/<name>``) and ``log.jsonl`` by the same path as the loss terms. Only stages
that train j against a frozen f report them (``stage.amelioration`` or ``stage.freeze_f``: stage two,
and the "w/o AC" ablation that runs stage two without the AC terms, so the two can be compared):

* ``ac/share_j_better``: share of the epoch's training images with L_ID^j(I) < L_ID^f(I), the
  per-image ID losses AC_ID compares (mean of the per-batch shares; batches are equal-sized; under
  DDP the mean over ranks);
* ``ac/grad_share/<term>`` and ``ac/grad_share/<term>/<group>``: ||grad of the AC term|| /
  ||grad of the whole loss L'|| over the trainable parameters (all of them, then each group),
  measured on the FIRST step of each epoch only: one ``autograd.grad`` of L' plus one per AC term
  over the already built graph, i.e. 3 extra backward passes per epoch in stage two, where the frozen
  backbone is not traversed. Above 1 means the other terms pull partly against the AC term;
* ``ac/rel_change/<group>``: ||w_end - w_start|| / ||w_start|| of the group's trainable weights
  over the epoch (e.g. ``joint``, ``j_head``, ``attr_branches``).

The AC terms' values themselves are the criterion's named terms ``ac_tri`` and ``ac_id`` (logged as
``train/ac_tri``, ``train/ac_id``). Groups are the model's top-level modules with a trainable parameter.

Example:
    >>> diag = EpochDiagnostics.begin(model, stage)
    >>> for step, batch in enumerate(batches, start=1):
    ...     terms = criterion(model(images), ids, attrs); loss = sum(terms.values())
    ...     diag.on_step(step, terms, loss)          # before backward: step 1 measures gradient shares
    ...     loss.backward(); optimizer.step()
    >>> epoch_terms |= diag.finish(ctx)               # {"ac/share_j_better": ..., "ac/rel_change/joint": ...}
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from anet.config import StageCfg
from anet.train.runtime import RuntimeContext, all_reduce_mean, unwrap

__all__ = ["AC_TERMS", "PREFIX", "EpochDiagnostics", "trainable_groups"]

PREFIX = "ac/"
AC_TERMS = ("ac_tri", "ac_id")  # the criterion's names of eqs. 12 and 11


def trainable_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Top-level module name -> its trainable parameters (groups without any are left out)."""
    groups = {name: [p for p in child.parameters() if p.requires_grad]
              for name, child in unwrap(model).named_children()}
    return {name: params for name, params in groups.items() if params}


class EpochDiagnostics:
    """One epoch's diagnostics (module doc); a no-op for stages that do not train j against a frozen f."""

    def __init__(self, groups: dict[str, list[nn.Parameter]]) -> None:
        self.groups = groups
        self.start = {name: _flat(params).clone() for name, params in groups.items()}
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.grad_shares: dict[str, float] = {}

    @classmethod
    def begin(cls, model: nn.Module, stage: StageCfg) -> EpochDiagnostics:
        """Snapshot the trainable groups' weights at the start of the epoch (nothing when disabled)."""
        return cls(trainable_groups(model) if stage.amelioration or stage.freeze_f else {})

    @property
    def enabled(self) -> bool:
        """False for stages without a frozen reference f (stage one): nothing is measured or logged."""
        return bool(self.groups)

    def on_step(self, step: int, terms: Mapping[str, torch.Tensor], loss: torch.Tensor) -> None:
        """Accumulate the criterion's ``stats``; on step 1 also the gradient shares (call before backward)."""
        if not self.enabled:
            return
        for name, value in getattr(terms, "stats", {}).items():  # detached scalars, summed on the device
            self.sums[name] = self.sums.get(name, 0.0) + value.detach().float()
        self.steps += 1
        if step == 1:
            self.grad_shares = _grad_shares(terms, loss, self.groups)

    def finish(self, ctx: RuntimeContext) -> dict[str, float]:
        """The epoch's values by logged name (averaged over DDP ranks where they differ per rank)."""
        if not self.enabled:
            return {}
        values = {f"{PREFIX}{name}": float(total) / max(self.steps, 1) for name, total in self.sums.items()}
        values = all_reduce_mean(values | self.grad_shares, ctx)
        for name, params in self.groups.items():  # weights are equal on every rank after DDP's averaged steps
            start = self.start[name]
            change = torch.linalg.vector_norm(_flat(params) - start) / torch.linalg.vector_norm(start).clamp(min=1e-12)
            values[f"{PREFIX}rel_change/{name}"] = float(change)
        return values


def _flat(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])  # n_params


def _grad_shares(terms: Mapping[str, torch.Tensor], loss: torch.Tensor,
                 groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """||grad term|| / ||grad loss|| per AC term, over all trainable parameters and per group.

    ``autograd.grad`` returns the gradients without accumulating them into ``.grad`` (and without
    running DDP's reducer hooks, which sit on the accumulation), so the step's own backward is unchanged.
    """
    present = [name for name in AC_TERMS if name in terms and terms[name].requires_grad]
    if not present or not loss.requires_grad:
        return {}
    names = list(groups)
    params = [p for name in names for p in groups[name]]
    sizes = [len(groups[name]) for name in names]
    total = _group_norms(loss, params, sizes)
    shares: dict[str, float] = {}
    for term in present:
        norms = _group_norms(terms[term], params, sizes)
        shares[f"{PREFIX}grad_share/{term}"] = float(_ratio(norms.square().sum().sqrt(), total.square().sum().sqrt()))
        for name, norm, whole in zip(names, norms, total, strict=True):
            shares[f"{PREFIX}grad_share/{term}/{name}"] = float(_ratio(norm, whole))
    return shares


def _group_norms(value: torch.Tensor, params: list[nn.Parameter], sizes: list[int]) -> torch.Tensor:
    """The L2 norm of d value / d params within each group (n_groups); unused parameters count as 0."""
    grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    squares = torch.stack([g.float().square().sum() if g is not None else torch.zeros((), device=value.device)
                           for g in grads])  # n_params
    return torch.stack([chunk.sum() for chunk in squares.split(sizes)]).sqrt()  # n_groups


def _ratio(part: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    return part / whole.clamp(min=1e-12)
