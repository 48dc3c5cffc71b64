"""Training throughput of the real ANet step: fp32 NCHW against bf16 autocast + channels_last.

One training step = device augmentation (BatchAugment) + forward + criterion (fp32) + backward + Adam,
on random uint8 images of P x K = 8 x 4 identities, exactly as anet.train.engine runs it. Both formats are
measured in the same process, one after the other, so their ratio is meaningful on a noisy machine.

Usage (jemalloc as `make bench` uses it)::

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .venv/bin/python -m bench.train_bench
    .venv/bin/python -m bench.train_bench --depths 18 --size 128 --steps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from anet.config import AugmentCfg, LossCfg, ModelCfg, StageCfg
from anet.data.augment import BatchAugment
from anet.losses import Criterion
from anet.model import build_model
from anet.train.data import make_optimizer
from anet.train.engine import to_fp32
from anet.train.runtime import autocast

ATTR_CLASSES = {"color": 10, "type": 9}
NUM_IDS = 120  # the synthetic profile's training identities


def _batch(p: int, k: int, size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    images = torch.randint(0, 256, (p * k, size, size, 3), dtype=torch.uint8)  # B x H x W x 3
    ids = torch.arange(p).repeat_interleave(k)  # B
    attrs = {"color": ids % 10, "type": ids % 9}
    return images, ids, attrs


def time_steps(depth: int, precision: str, channels_last: bool, size: int, p: int, k: int, steps: int,
               warmup: int) -> dict[str, float]:
    """Median seconds per training step and images per second for one configuration."""
    torch.manual_seed(0)
    model = build_model(ModelCfg(depth=depth, variant="anet"), NUM_IDS, ATTR_CLASSES).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    augment = BatchAugment(AugmentCfg(), channels_last=channels_last)
    criterion = Criterion(LossCfg())
    optimizer = make_optimizer(model, StageCfg(name="bench", epochs=1))
    images, ids, attrs = _batch(p, k, size)
    device = torch.device("cpu")
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        x = augment(images)  # B x 3 x H x W float
        with autocast(device, precision):
            out = model(x)
        terms = criterion(to_fp32(out) if precision != "fp32" else out, ids, attrs)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"s_per_step": round(step, 3), "img_per_s": round(p * k / step, 2),
            "spread": round((max(times) - min(times)) / step, 3)}


def main(argv: list[str] | None = None) -> None:
    """Print one JSON object: per backbone depth, fp32 NCHW and bf16 + channels_last, and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[18, 50])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    results: dict[str, object] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""), "size": args.size, "batch": args.p * args.k,
        "step": "augment + forward + criterion + backward + fused Adam(amsgrad)",
    }
    for depth in args.depths:
        common = dict(size=args.size, p=args.p, k=args.k, steps=args.steps, warmup=args.warmup)
        fp32 = time_steps(depth, "fp32", False, **common)
        fast = time_steps(depth, "bf16", True, **common)
        results[f"r{depth}_ibn_anet"] = {"fp32_nchw": fp32, "bf16_channels_last": fast,
                                         "speedup": round(fast["img_per_s"] / fp32["img_per_s"], 2)}
        print(json.dumps({f"r{depth}_ibn_anet": results[f"r{depth}_ibn_anet"]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
