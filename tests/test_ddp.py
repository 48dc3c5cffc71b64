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
