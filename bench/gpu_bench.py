"""GPU readiness: ``make bench ARGS="--only gpu"``.

On a CUDA machine, for Baseline and ANet with R50-IBN at 256 x 256 px, the real training step
(BatchAugment + forward + criterion in fp32 + backward + fused Adam, as anet.train.engine runs it):

* images/s and peak memory per GPU in fp32, bf16 autocast, bf16 + channels_last, and bf16 +
  channels_last + torch.compile (kept in the report either way; ``compile_helps`` says if it did);
* the largest per-GPU share of the global batch that fits (doubling, then bisection, in K-image steps);
* a DDP run (nccl) on all visible GPUs at the same per-GPU share, and its scaling efficiency
  (DDP images/s over GPUs x one-GPU images/s);
* the projected wall time of each paper profile's full schedule (stage one + stage two epochs over the
  dataset's training images at the DDP rate; stage two freezes f, so this is an upper bound).

Without CUDA the same code runs at a tiny size (R18, 32 px, 4 images, 2 steps, gloo DDP on 2 CPU processes, no
torch.compile) and says so: its numbers say nothing about a GPU. Prints one JSON object (last line).

    python -m bench.gpu_bench                 # what make bench ARGS="--only gpu" runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from anet.config import AugmentCfg, LossCfg, ModelCfg, StageCfg, load_config
from anet.data.augment import BatchAugment
from anet.losses import Criterion
from anet.model import build_model
from anet.train.data import make_optimizer
from anet.train.engine import to_fp32
from anet.train.runtime import autocast

log = logging.getLogger("bench.gpu")
ATTR_CLASSES = {"color": 10, "type": 9}
NUM_IDS = 576  # VeRi-776's training identities
TRAIN_IMAGES = {"veri776": 37_778, "veriwild": 277_797, "vehicleid": 113_346}  # reid-anchors.md
FORMATS = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False),
           "bf16_channels_last": ("bf16", True, False), "bf16_channels_last_compile": ("bf16", True, True)}


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a measurement is: backbone depth, image side, per-GPU share (p x k), steps."""

    depth: int
    image: int
    p: int
    k: int
    steps: int
    warmup: int
    max_share: int


FULL = Size(depth=50, image=256, p=16, k=4, steps=10, warmup=3, max_share=1024)
TINY = Size(depth=18, image=32, p=2, k=2, steps=2, warmup=1, max_share=8)


class Trainer:
    """One model + optimiser on ``device`` in one format; :meth:`step` runs one real training step."""

    def __init__(self, variant: str, size: Size, device: torch.device, fmt: str, ddp: bool = False):
        self.precision, self.channels_last, compiled = FORMATS[fmt]
        torch.manual_seed(0)
        model = build_model(ModelCfg(variant=variant, depth=size.depth), NUM_IDS, ATTR_CLASSES).to(device).train()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(model, StageCfg(name="bench", epochs=1))
        if ddp:
            ids = [device.index] if device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
        self.model = torch.compile(model) if compiled else model
        self.augment = BatchAugment(AugmentCfg(), channels_last=self.channels_last)
        if device.type == "cuda":
            torch.nn.Module._apply(self.augment, lambda t: t.to(device))
        self.criterion, self.device, self.size = Criterion(LossCfg()), device, size

    def step(self, share: int) -> None:
        p = max(share // self.size.k, 1)
        images = torch.randint(0, 256, (p * self.size.k, self.size.image, self.size.image, 3), dtype=torch.uint8)
        ids = torch.arange(p).repeat_interleave(self.size.k).to(self.device)  # B
        attrs = {"color": ids % 10, "type": ids % 9}
        x = self.augment(images.to(self.device))  # B x 3 x H x W float
        with autocast(self.device, self.precision):
            out = self.model(x)
        terms = self.criterion(to_fp32(out) if self.precision != "fp32" else out, ids, attrs)
        self.optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, share: int) -> float:
        """Median seconds per step after the warm-up."""
        times = []
        for i in range(self.size.warmup + self.size.steps):
            start = time.perf_counter()
            self.step(share)
            if i >= self.size.warmup:
                times.append(time.perf_counter() - start)
        return statistics.median(times)


def measure_format(variant: str, size: Size, device: torch.device, fmt: str) -> dict[str, Any]:
    """images/s and peak memory (GiB, CUDA only) of one format at the per-GPU share p x k."""
    share = size.p * size.k
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = Trainer(variant, size, device, fmt).timed(share)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"img_per_s": round(share / seconds, 2), "s_per_step": round(seconds, 4),
            "peak_gib": None if peak is None else round(peak, 2)}


def fits(trainer: Trainer, share: int) -> bool:
    try:
        trainer.step(share)
        return True
    except torch.cuda.OutOfMemoryError:
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return False


def largest_share(variant: str, size: Size, device: torch.device, fmt: str) -> int:
    """The most images per GPU one step takes (a multiple of k; ``max_share`` caps the search)."""
    trainer = Trainer(variant, size, device, fmt)
    good, bad = 0, None
    share = size.k
    while share <= size.max_share and fits(trainer, share):
        good, share = share, share * 2
    bad = share if share <= size.max_share else None
    while bad is not None and bad - good > size.k:
        mid = (good + bad) // 2 // size.k * size.k
        good, bad = (mid, bad) if fits(trainer, mid) else (good, mid)
    return good


def _ddp_worker(rank: int, world: int, port: int, variant: str, size: Size, fmt: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        seconds = Trainer(variant, size, device, fmt, ddp=True).timed(size.p * size.k)
        if rank == 0:
            Path(out).write_text(json.dumps({"s_per_step": seconds}))
    finally:
        dist.destroy_process_group()


def ddp_run(variant: str, size: Size, fmt: str, world: int, one_gpu_img_per_s: float) -> dict[str, Any]:
    """DDP on ``world`` processes (one per GPU; 2 on CPU) at the same per-GPU share; scaling efficiency."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ddp.json")
        mp.spawn(_ddp_worker, args=(world, port, variant, size, fmt, out), nprocs=world, join=True)
        seconds = json.loads(Path(out).read_text())["s_per_step"]
    total = world * size.p * size.k / seconds
    return {"processes": world, "backend": "nccl" if torch.cuda.is_available() else "gloo",
            "img_per_s": round(total, 2), "scaling_efficiency": round(total / (world * one_gpu_img_per_s), 3)}


def projections(img_per_s: float) -> dict[str, Any]:
    """Hours for each paper profile's stage one + stage two epochs over its training images at ``img_per_s``."""
    out = {}
    for profile, images in TRAIN_IMAGES.items():
        cfg = load_config(profile)
        epochs = cfg.stage_one.epochs + cfg.stage_two.epochs
        out[profile] = {"epochs": epochs, "train_images": images,
                        "hours": round(epochs * images / img_per_s / 3600, 2)}
    return out


def bench_variant(variant: str, size: Size, device: torch.device, gpus: int) -> dict[str, Any]:
    """Every measurement for one model variant."""
    formats = [f for f in FORMATS if device.type == "cuda" or not FORMATS[f][2]]  # no compile on the CPU run
    per_format = {fmt: measure_format(variant, size, device, fmt) for fmt in formats}
    eager = per_format["bf16_channels_last"]
    best = max(per_format, key=lambda f: per_format[f]["img_per_s"])
    report: dict[str, Any] = {"per_gpu_share": size.p * size.k, "formats": per_format, "best_format": best}
    if "bf16_channels_last_compile" in per_format:
        report["compile_helps"] = per_format["bf16_channels_last_compile"]["img_per_s"] > eager["img_per_s"]
    report["largest_share"] = {best: largest_share(variant, size, device, best)}
    if device.type != "cuda":
        report["largest_share"]["note"] = f"no memory ceiling on CPU; search capped at {size.max_share}"
    eager_best = best if not FORMATS[best][2] else "bf16_channels_last"  # DDP runs eager (no compile time)
    world = gpus if device.type == "cuda" else 2
    ddp = ddp_run(variant, size, eager_best, world, per_format[eager_best]["img_per_s"])
    report["ddp"] = {"format": eager_best, **ddp}
    report["projected_full_schedule"] = projections(ddp["img_per_s"])
    return report


def main(argv: list[str] | None = None) -> None:
    """Print one JSON object with every measurement and where it was taken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["baseline", "anet"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cuda = torch.cuda.is_available()
    size = FULL if cuda else TINY
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    gpus = torch.cuda.device_count() if cuda else 0
    if not cuda:
        log.warning("no CUDA device: tiny CPU run (R%d, %d px, %d images, %d steps); these numbers say nothing "
                    "about a GPU", size.depth, size.image, size.p * size.k, size.steps)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "gpus": gpus, "torch": torch.__version__,
        "size": dataclasses.asdict(size), "note": None if cuda else "no CUDA device: tiny CPU run",
    }
    for variant in args.variants:
        results[f"{variant}_r{size.depth}_ibn"] = bench_variant(variant, size, device, gpus)
        print(json.dumps({variant: results[f"{variant}_r{size.depth}_ibn"]}), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
