"""FastReID's solver in anet/train/solver.py equals FastReID 1.4.0's: parameter groups, the optimiser with the
backbone frozen for FREEZE_ITERS, and the lr of every iteration (its own scheduler driven by its own hooks).
Skips without FastReID (a test-only reference)."""

from __future__ import annotations

import copy

import pytest
import torch

from anet.train.solver import FreezeFirstIters, SolverSchedule, build_optimizer, build_scheduler, param_groups

fastreid = pytest.importorskip("fastreid.layers", reason="FastReID 1.4.0 (test-only reference) is not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


def _fr_cfg(**overrides: object):
    from fastreid.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_list([x for kv in overrides.items() for x in (kv[0].replace("__", "."), kv[1])])
    return cfg


def _fr_hooks() -> dict[str, type]:
    """FastReID's own LRScheduler and LayerFreeze hook classes, compiled from its hooks.py source (the
    module itself cannot be imported here: it pulls in tensorboard and fastreid.evaluation)."""
    import ast
    import collections
    import logging
    from pathlib import Path

    import fastreid as fr

    path = Path(fr.__file__).parent / "engine" / "hooks.py"
    tree = ast.parse(path.read_text())
    keep = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name in {"LRScheduler", "LayerFreeze"}]
    namespace: dict = {"HookBase": object, "Counter": collections.Counter, "logging": logging,
                       "DistributedDataParallel": torch.nn.parallel.DistributedDataParallel}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {"LRScheduler": namespace["LRScheduler"], "LayerFreeze": namespace["LayerFreeze"]}


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
        self.heads = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        self.heads[1].bias.requires_grad_(False)  # a BNNeck-like frozen bias is left out of the groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(x).mean(dim=(2, 3)))


_SOLVER = dict(SOLVER__BASE_LR=0.01, SOLVER__WEIGHT_DECAY=5e-4, SOLVER__WEIGHT_DECAY_NORM=1e-4,
               SOLVER__BIAS_LR_FACTOR=2.0, SOLVER__WEIGHT_DECAY_BIAS=0.0, SOLVER__HEADS_LR_FACTOR=3.0)


def test_param_groups_equal_fastreid() -> None:
    from fastreid.solver.build import get_default_optimizer_params

    net = _Net()
    theirs = get_default_optimizer_params(net, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=1e-4,
                                          bias_lr_factor=2.0, heads_lr_factor=3.0, weight_decay_bias=0.0,
                                          freeze_layers=["backbone"])
    ours = param_groups(net, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=1e-4, bias_lr_factor=2.0,
                        weight_decay_bias=0.0, heads_lr_factor=3.0, freeze_prefixes=("backbone",))
    assert len(ours) == len(theirs) == 7
    for o, t in zip(ours, theirs, strict=True):
        assert o["params"][0] is t["params"][0], o["name"]
        assert (o["lr"], o["weight_decay"], o["freeze"]) == \
            pytest.approx((t["lr"], t["weight_decay"], t["freeze_status"] == "freeze")), o["name"]


@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_optimizer_with_backbone_frozen_first_iters_equals_fastreid(opt: str) -> None:
    from fastreid.solver.build import build_optimizer as fr_build_optimizer

    torch.manual_seed(0)
    theirs_net = _Net()
    ours_net = copy.deepcopy(theirs_net)
    cfg = _fr_cfg(SOLVER__OPT=opt, SOLVER__FREEZE_ITERS=3, MODEL__FREEZE_LAYERS=["backbone"], SOLVER__MOMENTUM=0.9,
                  **_SOLVER)
    theirs_opt, _ = fr_build_optimizer(cfg, theirs_net, contiguous=False)
    freeze_hook = _fr_hooks()["LayerFreeze"](theirs_net, ["backbone"], 3)
    freeze_hook.trainer = type("T", (), {"iter": 0})()
    groups = param_groups(ours_net, base_lr=0.01, weight_decay=5e-4, weight_decay_norm=1e-4, bias_lr_factor=2.0,
                          weight_decay_bias=0.0, heads_lr_factor=3.0, freeze_prefixes=("backbone",))
    ours_opt = build_optimizer(opt, groups, momentum=0.9)
    ours_freeze = FreezeFirstIters(ours_net, ours_opt, ("backbone",), freeze_iters=3)
    start = copy.deepcopy(ours_net.backbone.state_dict())
    for it in range(6):
        x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(it))
        freeze_hook.trainer.iter = it
        freeze_hook.before_step()
        ours_freeze.before_step(it)
        assert ours_net.backbone.training == theirs_net.backbone.training == (it >= 3)
        for net, optimizer in ((ours_net, ours_opt), (theirs_net, theirs_opt)):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
        if it == 2:  # backbone weights and BN statistics untouched while frozen
            for k, v in ours_net.backbone.state_dict().items():
                assert torch.equal(v, start[k]), k
        for (name, p), q in zip(ours_net.state_dict().items(), theirs_net.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, msg=f"{name} after step {it}")
    assert not torch.equal(ours_net.backbone[0].weight, start["0.weight"])  # trains after FREEZE_ITERS


def _fr_lrs(cfg, iters_per_epoch: int, n_iters: int) -> list[list[float]]:
    """Drive FastReID's scheduler exactly as its trainer does (its LRScheduler hook's after_step/after_epoch)."""
    from fastreid.solver.build import build_lr_scheduler

    net = _Net()
    optimizer = torch.optim.SGD(
        [{"params": [p], "lr": cfg.SOLVER.BASE_LR * (2.0 if i % 2 else 1.0)} for i, p in enumerate(net.parameters())
         if p.requires_grad], momentum=0.9)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    hook = _fr_hooks()["LRScheduler"](optimizer, scheduler)
    storage = type("S", (), {"put_scalar": lambda *a, **k: None})()
    hook.trainer = type("T", (), {"iter": 0, "epoch": 0, "grad_scaler": None, "storage": storage,
                                  "warmup_iters": cfg.SOLVER.WARMUP_ITERS,
                                  "delay_epochs": cfg.SOLVER.DELAY_EPOCHS})()
    lrs = []
    for it in range(n_iters):
        hook.trainer.iter, hook.trainer.epoch = it, it // iters_per_epoch
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        hook.after_step()
        if (it + 1) % iters_per_epoch == 0:
            hook.after_epoch()
    return lrs


@pytest.mark.parametrize(
    ("sched", "warmup", "delay", "steps"),
    [("CosineAnnealingLR", 30, 12, ()),  # Base-SBS form: warmup, then flat until DELAY_EPOCHS, cosine to the end
     ("CosineAnnealingLR", 40, 0, ()),  # warmup spanning epochs, no delay (T_max from ceil(warmup / ipe))
     ("MultiStepLR", 30, 0, (10, 20)),  # bag-of-tricks form; milestones count the schedule's own steps
     ("MultiStepLR", 0, 0, (5, 25))],
)
def test_lr_per_iteration_equals_fastreid(sched: str, warmup: int, delay: int, steps: tuple[int, ...]) -> None:
    ipe, n = 7, 300  # 300 iterations = 42 epochs and a bit
    cfg = _fr_cfg(SOLVER__SCHED=sched, SOLVER__MAX_EPOCH=44, SOLVER__BASE_LR=0.01, SOLVER__ETA_MIN_LR=7.7e-5,
                  SOLVER__WARMUP_ITERS=warmup, SOLVER__WARMUP_FACTOR=0.1, SOLVER__DELAY_EPOCHS=delay,
                  SOLVER__STEPS=list(steps), SOLVER__GAMMA=0.1)
    theirs = _fr_lrs(cfg, ipe, n)
    net = _Net()
    groups = [{"params": [p], "lr": 0.01 * (2.0 if i % 2 else 1.0)} for i, p in enumerate(net.parameters())
              if p.requires_grad]
    optimizer = build_optimizer("SGD", groups)
    s = SolverSchedule(sched="cosine" if sched.startswith("Cosine") else "multistep", max_epoch=44,
                       warmup_iters=warmup, warmup_factor=0.1, delay_epochs=delay, eta_min=7.7e-5, steps=steps)
    scheduler = build_scheduler(optimizer, s, ipe)
    ours = []
    for _ in range(n):
        ours.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert len({round(x[0], 12) for x in ours}) >= 3  # the schedule moves
    for it, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        assert o == pytest.approx(t, rel=1e-9, abs=1e-15), f"iteration {it}"


def test_training_wiring_freezes_the_backbone_and_survives_a_resume() -> None:
    """make_optimizer with solver.kind=fastreid: for FREEZE_ITERS steps the backbone's weights AND its BN
    statistics stay (forward pre-hook puts it in eval), the heads train; the count is in the optimiser's state."""
    from anet.config import ModelCfg, StageCfg
    from anet.model import build_model
    from anet.train.data import make_optimizer

    torch.manual_seed(0)
    model = build_model(ModelCfg(variant="baseline", depth=18), num_ids=4, attr_classes={})
    stage = StageCfg(name="stage_one", epochs=1, lr=0.01, amsgrad=False,
                     solver={"kind": "fastreid", "optimizer": "sgd", "freeze_iters": 2})
    optimizer = make_optimizer(model, stage)
    start = copy.deepcopy(model.state_dict())
    x, ids = torch.randn(8, 3, 32, 32), torch.arange(4).repeat_interleave(2)

    def step() -> None:
        model.train()  # the engine calls train() every epoch; the hook re-applies eval while frozen
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x).f_logits, ids).backward()
        optimizer.step()

    step(), step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(k.startswith("f_head.") for k in changed)  # backbone: weights and BN stats kept
    resumed = make_optimizer(model, stage)
    resumed.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    optimizer = resumed
    step()
    assert not torch.equal(model.backbone.conv1.weight, start["backbone.conv1.weight"])  # not frozen again
    assert not torch.equal(model.backbone.bn1.running_mean, start["backbone.bn1.running_mean"])
