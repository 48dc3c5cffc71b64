"""FastReID's solver (``fastreid/solver/build.py`` + ``lr_scheduler.py`` + the engine's LR and freeze hooks),
equal per iteration to FastReID 1.4.0 (tests/test_fastreid_blocks.py).

* :func:`param_groups`: one group per parameter, as ``get_default_optimizer_params``: ``lr = base_lr``
  (``x bias_lr_factor`` for parameters named ``bias``, ``x heads_lr_factor`` under the head modules),
  ``weight_decay`` (``weight_decay_norm`` inside norm layers, then ``weight_decay_bias`` for biases,
  in that order), ``freeze`` for the parameters under ``freeze_prefixes`` (FastReID's FREEZE_LAYERS).
* :func:`build_optimizer`: SGD (momentum, nesterov) or Adam (torch defaults) over those groups.
* :class:`FreezeFirstIters`: for the first ``freeze_iters`` optimiser steps the frozen groups' gradients
  are hidden from the step (FastReID's ``OptimizerWithFreezeLayer``) and those modules run in eval mode
  (its ``LayerFreeze`` hook, so their BatchNorm statistics do not move either).
* :func:`build_scheduler`: FastReID steps its warmup every iteration and its main schedule (cosine after
  ``delay_epochs``, or multi-step) at the end of an epoch, and only once warmup is over; this is that
  schedule in closed form per iteration (a LambdaLR stepped once per optimiser step). Quirk kept: the main
  schedule counts its OWN steps, so when warmup spans epochs, multi-step milestones land that many
  epochs later than their number says.

Example:
    >>> groups = param_groups(model, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=5e-4)
    >>> optimizer = build_optimizer("SGD", groups, momentum=0.9)
    >>> scheduler = build_scheduler(optimizer, SolverSchedule(...), iters_per_epoch=len(sampler))
    >>> freeze = FreezeFirstIters(model, optimizer, ("backbone",), freeze_iters=1000)
    >>> for it in range(n): freeze.before_step(it); ...; optimizer.step(); scheduler.step()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from anet.errors import UserError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm)


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def param_groups(model: nn.Module, base_lr: float, weight_decay: float, weight_decay_norm: float,
                 bias_lr_factor: float = 1.0, weight_decay_bias: float | None = None,
                 heads_lr_factor: float = 1.0, head_prefixes: Sequence[str] = ("heads",),
                 freeze_prefixes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """FastReID's per-parameter groups (module doc); ``weight_decay_bias`` None = ``weight_decay``."""
    wd_bias = weight_decay if weight_decay_bias is None else weight_decay_bias
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or id(value) in seen:
                continue
            seen.add(id(value))
            lr, wd = base_lr, weight_decay
            if isinstance(module, _NORMS):
                wd = weight_decay_norm
            if param_name == "bias":
                lr, wd = base_lr * bias_lr_factor, wd_bias
            if _under(module_name, head_prefixes):
                lr *= heads_lr_factor
            name = f"{module_name}.{param_name}" if module_name else param_name
            groups.append({"params": [value], "lr": lr, "weight_decay": wd, "name": name,
                           "freeze": _under(name, freeze_prefixes)})
    if not groups:
        raise UserError("no trainable parameters (everything is frozen)")
    return groups


def build_optimizer(opt: Literal["SGD", "Adam"], groups: list[dict[str, Any]], momentum: float = 0.9,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """FastReID's SOLVER.OPT: SGD with momentum (and nesterov), or Adam with torch's defaults."""
    if opt == "SGD":
        return torch.optim.SGD(groups, momentum=momentum, nesterov=nesterov)
    return torch.optim.Adam(groups)


class FreezeFirstIters:
    """Freeze the ``freeze`` groups (and eval-mode the modules under ``prefixes``) for ``freeze_iters`` steps.

    The step count lives in the optimiser's first param group (``freeze_steps``), so it is saved and
    restored with the optimiser's state dict: a resumed run does not freeze again. A loop that knows its
    iteration calls :meth:`before_step`; :meth:`follow_forward` does it from a forward pre-hook instead.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, prefixes: Sequence[str],
                 freeze_iters: int) -> None:
        self.model, self.optimizer = model, optimizer
        self.prefixes, self.freeze_iters = tuple(prefixes), freeze_iters
        optimizer.param_groups[0].setdefault("freeze_steps", 0)
        self.is_frozen = False
        self._stash: list[tuple[torch.Tensor, torch.Tensor]] = []
        if freeze_iters > 0 and self.prefixes:
            optimizer.register_step_pre_hook(self._hide)
            optimizer.register_step_post_hook(self._restore)

    @property
    def steps(self) -> int:
        """Optimiser steps taken so far (counted by the step hooks)."""
        return int(self.optimizer.param_groups[0]["freeze_steps"])

    def follow_forward(self) -> None:
        """Apply :meth:`before_step` before every training-mode forward of the model."""
        if self.freeze_iters > 0 and self.prefixes:
            previous = self.model.__dict__.get("_freeze_first_iters_hook")
            if previous is not None:  # a later stage's optimiser replaces an earlier one's rule
                previous.remove()
            self.model.__dict__["_freeze_first_iters_hook"] = self.model.register_forward_pre_hook(
                lambda m, _args: self.before_step(self.steps) if m.training else None)

    def before_step(self, iteration: int) -> None:
        """FastReID's LayerFreeze.before_step: eval mode while ``iteration < freeze_iters``, train once after.

        Eval mode is re-applied every frozen step (a loop may call ``model.train()`` each epoch); the
        modules are put back in train mode only at the switch, so a later stage's own freezing stays.
        """
        frozen = iteration < self.freeze_iters
        if not frozen and not self.is_frozen:
            return
        for name, child in self.model.named_children():
            if name in self.prefixes:
                child.train(not frozen)
        self.is_frozen = frozen

    def _hide(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if self.steps >= self.freeze_iters:
            return
        for group in optimizer.param_groups:
            if group.get("freeze"):
                for p in group["params"]:
                    if p.grad is not None:
                        self._stash.append((p, p.grad))
                        p.grad = None

    def _restore(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        if self.steps < self.freeze_iters:
            for p, grad in self._stash:
                p.grad = grad
            self._stash.clear()
        self.optimizer.param_groups[0]["freeze_steps"] = self.steps + 1


@dataclass(frozen=True)
class SolverSchedule:
    """FastReID's SOLVER schedule keys (SCHED, MAX_EPOCH, DELAY_EPOCHS, ETA_MIN_LR, STEPS, GAMMA, WARMUP_*)."""

    sched: Literal["cosine", "multistep"]
    max_epoch: int
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    delay_epochs: int = 0
    eta_min: float = 1e-7
    steps: tuple[int, ...] = ()
    gamma: float = 0.1


def main_steps_before(iteration: int, iters_per_epoch: int, s: SolverSchedule) -> int:
    """How many times FastReID's after_epoch hook has stepped the main schedule before ``iteration``."""
    epochs_done = iteration // iters_per_epoch
    return sum(1 for e in range(1, epochs_done + 1) if e * iters_per_epoch > s.warmup_iters and e > s.delay_epochs)


def lr_at(iteration: int, base_lr: float, iters_per_epoch: int, s: SolverSchedule) -> float:
    """The lr FastReID uses for the optimiser step of ``iteration`` (0-based)."""
    if iteration < s.warmup_iters:
        alpha = iteration / s.warmup_iters
        return base_lr * (s.warmup_factor * (1 - alpha) + alpha)
    k = main_steps_before(iteration, iters_per_epoch, s)
    if s.sched == "multistep":
        return base_lr * s.gamma ** sum(1 for m in s.steps if m <= k)
    t_max = s.max_epoch - max(math.ceil(s.warmup_iters / iters_per_epoch), s.delay_epochs)
    return s.eta_min + (base_lr - s.eta_min) * (1 + math.cos(math.pi * k / t_max)) / 2


def build_scheduler(optimizer: torch.optim.Optimizer, s: SolverSchedule, iters_per_epoch: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration LambdaLR giving :func:`lr_at` for every group (each relative to its own base lr)."""
    if iters_per_epoch < 1:
        raise UserError("the FastReID schedule needs at least one iteration per epoch")
    if s.sched == "cosine" and s.max_epoch - max(math.ceil(s.warmup_iters / iters_per_epoch), s.delay_epochs) < 1:
        raise UserError(f"cosine schedule: max_epoch {s.max_epoch} leaves no epoch after warmup "
                        f"({s.warmup_iters} iterations) and delay ({s.delay_epochs} epochs); raise the epochs")

    def factor_for(base: float) -> Any:
        return lambda it: lr_at(it, base, iters_per_epoch, s) / base

    bases = [g["lr"] for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(b) for b in bases])
