"""Two-process DDP (gloo, CPU) under torchrun with the real train_stage: ranks end with equal weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from anet.config import load_config
from anet.steps.prepare import prepare_from_config

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    from anet.config import load_config
    from anet.data.cache import PreparedDataset
    from anet.train.data import build_train_data
    from anet.train.engine import train_stage
    from anet.losses import Criterion
    from anet.train.runtime import setup_runtime, shutdown_distributed
    from anet.train.stage import build_model_for

    cache_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = load_config("smoke", sys.argv[3:])
    ctx = setup_runtime(cfg.runtime)
    prepared = PreparedDataset.open(cache_dir)
    data = build_train_data(prepared, cfg, ctx.rank, ctx.world_size)
    model = build_model_for(cfg, prepared)
    result = train_stage(model, Criterion(cfg.loss), cfg.stage_one, data, cfg.runtime, out / "stage_one",
                         config=cfg, progress=False)
    torch.save({"model": model.state_dict(), "steps": len(data.sampler), "terms": result.last_terms},
               out / f"rank{ctx.rank}.pt")
    shutdown_distributed()
""")


@pytest.mark.integration
def test_two_gloo_ranks_end_with_equal_weights(tmp_path):
    overrides = [f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}", "runtime.seed=3"]
    prepared = prepare_from_config(load_config("smoke", overrides), progress=False)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
           str(script), str(prepared.cache_dir), str(tmp_path / "out"), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0 = torch.load(tmp_path / "out" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "out" / "rank1.pt", weights_only=True)
    # an epoch is a pass over the images: 6 training identities (2 of the 8 held out for validation) x 6
    # images = 12 chunks of K=4; P=4 is the global batch, so 3 steps, each rank taking 2 identities of each
    assert rank0["steps"] == rank1["steps"] == 3
    assert rank0["terms"] == rank1["terms"]  # epoch means are averaged over ranks
    a, b = rank0["model"], rank1["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    saved = torch.load(tmp_path / "out" / "stage_one" / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], saved["model"][k]) for k in a)
    assert len(saved["rng"]) == 2  # one RNG state per rank, for an exact resume


# --- the global batch: 2 gloo ranks (spawned, CPU) == one process on the same 8 images ---------------------

MINED = ("tri_f", "tri_j", "tri_g", "ac_tri")  # computed on the all-gathered batch: equal on every rank


def _global_case() -> dict:
    """8 images of 4 identities, interleaved so each rank's share of 4 holds ONE image per identity: without
    the all-gather no rank would find a single positive. Attribute labels are missing unevenly (rank 0
    has 2 of 4 colours labelled, rank 1 all 4), which the attribute CE's global mean must absorb."""
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randn(8, 3, 32, 32, generator=g), "ids": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]),
            "color": torch.tensor([0, -1, 1, -1, 0, 2, 1, 2]), "type": torch.tensor([1, 0, 1, 0, 1, 0, 1, 0])}


def _model(state: dict, stage: str) -> torch.nn.Module:
    from anet.model import build_model, freeze_for_amelioration

    cfg = load_config("smoke")
    model = build_model(cfg.model, num_ids=4, attr_classes={"color": 3, "type": 2})
    model.load_state_dict(state)
    if stage == "stage_two":
        freeze_for_amelioration(model)
    model.train()
    for module in model.modules():  # eval-mode BN: torch's SyncBatchNorm runs on CUDA only (see test doc)
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def _step(state: dict, case: dict, rows: slice, stage: str, ctx=None) -> tuple[dict, dict]:
    """Terms and parameter gradients of one step of ``stage`` on ``case[rows]`` (DDP-wrapped with ``ctx``)."""
    from anet.losses import Criterion
    from anet.train.runtime import wrap_ddp

    model = _model(state, stage)
    net = wrap_ddp(model, ctx) if ctx is not None else model
    criterion = Criterion(load_config("smoke").loss, amelioration=stage == "stage_two")
    terms = criterion(net(case["images"][rows]), case["ids"][rows],
                      {"color": case["color"][rows], "type": case["type"][rows]})
    loss = sum(terms.values())
    if stage == "stage_two":  # the AC diagnostics' autograd.grad on step 1 must leave DDP's backward intact
        from anet.config import StageCfg
        from anet.train.diagnostics import EpochDiagnostics

        EpochDiagnostics.begin(net, StageCfg(name=stage, epochs=1, freeze_f=True, amelioration=True)).on_step(
            1, terms, loss)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {n: float(v.detach()) for n, v in terms.items()}, grads


def _rank_main(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist

    from anet.train.runtime import RuntimeContext

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    try:
        case = torch.load(f"{tmp}/case.pt", weights_only=True)
        ctx = RuntimeContext(torch.device("cpu"), rank, world)
        rows = slice(rank * 4, rank * 4 + 4)
        result = {stage: _step(case["state"], case, rows, stage, ctx) for stage in ("stage_one", "stage_two")}
        torch.save(result, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_mine_the_global_batch_like_one_process(tmp_path):
    """Same loss terms and same gradients (float tolerance) as one process on the global batch, stage one
    (every term of L) and stage two (AC_tri, AC_ID, frozen f). BN runs in eval mode on both sides: in train
    mode each rank would normalise with its own share's statistics, and torch's SyncBatchNorm (what
    ``runtime.sync_bn`` turns on) refuses CPU tensors, so it cannot be the CPU test's answer."""
    import torch.multiprocessing as mp

    from anet.model import build_model

    torch.manual_seed(0)
    state = build_model(load_config("smoke").model, num_ids=4, attr_classes={"color": 3, "type": 2}).state_dict()
    case = {**_global_case(), "state": state}
    torch.save(case, tmp_path / "case.pt")
    mp.spawn(_rank_main, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for stage in ("stage_one", "stage_two"):
        single_terms, single_grads = _step(state, case, slice(0, 8), stage)
        assert set(MINED) & set(single_terms) and single_terms["tri_j"] > 0
        for name, value in single_terms.items():  # DDP's loss is the ranks' mean; mined terms are global
            per_rank = [r[stage][0][name] for r in ranks]
            assert sum(per_rank) / 2 == pytest.approx(value, rel=1e-5, abs=1e-6), (stage, name, per_rank)
            if name in MINED:
                assert per_rank == pytest.approx([value, value], rel=1e-5, abs=1e-6), (stage, name)
        for r in ranks:
            grads = r[stage][1]
            assert grads.keys() == single_grads.keys(), stage
            for name, grad in single_grads.items():  # float32 sums in another order: ~1e-6 of the largest entry
                error = float((grads[name] - grad).abs().max())
                assert error <= 1e-5 * max(1.0, float(grad.abs().max())), (stage, name, error)
