"""Data path benchmark: cache reads vs JPEG decoding, and the share of a train step spent on data.

    python -m bench.data_bench                    # prints one JSON line
    python -m bench.data_bench --images 800 --size 256 256

Measures, on temporary synthetic JPEGs (~250x240, quality 90, like the research notes):
* ``jpeg_decode_resize_img_s_per_core``: Pillow decode + bilinear resize, one thread;
* ``prepare_img_s``: the whole prepare step (hash + decode + resize + write) with its 2 threads;
* ``cache_batches_img_s``: TrainBatches (PK sampler, memmap fancy indexing), one thread;
* ``augment_ms_per_batch``: BatchAugment on the CPU (the training device here);
* ``train_step_ms``: a fixed small model (ANet, ResNet-18 backbone, fp32 channels_last) train step;
* ``data_wait_share``: (batch read + augment) / (that + train step), the goal is < 5 %;
  ``jpeg_wait_share``: the same if each batch were decoded from JPEG on one core instead.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anet.config import AugmentCfg, ModelCfg
from anet.data.augment import BatchAugment
from anet.data.cache import prepare_dataset
from anet.data.images import decode_resize
from anet.data.loader import TrainBatches
from anet.data.manifest import build_manifest
from anet.data.sampler import PKSampler
from anet.model import build_model


def make_jpegs(root: Path, ids: int, per_id: int, seed: int = 0) -> list[tuple]:
    """Smooth colour fields + noise, ~250x240 px, quality 90; returns manifest records."""
    rng = np.random.default_rng(seed)
    records = []
    for vid in range(ids):
        for j in range(per_id):
            h, w = int(rng.integers(220, 280)), int(rng.integers(210, 270))
            yy, xx = np.mgrid[0:h, 0:w]
            base = rng.uniform(0, 255, 3) + 60 * np.sin(xx[..., None] / rng.uniform(10, 40) + np.arange(3))
            pixels = np.clip(base + 40 * np.cos(yy[..., None] / 17) + rng.normal(0, 12, (h, w, 3)), 0, 255)
            out = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=90)  # H x W x 3
            rel = f"img/{vid:05d}_{j}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(out.getvalue())
            records.append((rel, str(vid), j % 4, "train", "", vid % 10, vid % 9))
    return records


def time_jpeg(root: Path, records: list[tuple], size: tuple[int, int]) -> float:
    torch.set_num_threads(1)
    start = time.perf_counter()
    for rel, *_ in records:
        decode_resize((root / rel).read_bytes(), size)
    return len(records) / (time.perf_counter() - start)


def time_batches(prepared, p: int, k: int, batches: int) -> tuple[float, object]:
    """img/s of TrainBatches over ``batches`` batches; also returns the last batch."""
    sampler = PKSampler(prepared.train_rows()["label"].to_numpy(), p=p, k=k, seed=0)
    loader = TrainBatches(prepared, sampler, ("color", "type"))
    count, last, start = 0, None, time.perf_counter()
    while count < batches:
        for last in loader:  # noqa: B007 (the last batch is returned)
            count += 1
            if count >= batches:
                break
    return batches * p * k / (time.perf_counter() - start), last


def time_train_step(images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:

    model = build_model(ModelCfg(variant="anet", depth=18, ibn=True), num_ids=int(labels.max()) + 1,
                        attr_classes={"color": 10, "type": 9}).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(images)
        loss = torch.nn.functional.cross_entropy(out.f_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_bench")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args, _ = parser.parse_known_args(argv)
    size = (args.size[0], args.size[1])
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        records = make_jpegs(root, ids=args.images // 4, per_id=4)
        manifest = build_manifest("synthetic", root, records, {"color": list("abcdefghij"),
                                                                "type": list("abcdefghi")})
        start = time.perf_counter()
        prepared = prepare_dataset(manifest, Path(tmp) / "cache", size, 0.0, progress=False)
        prepare_s = time.perf_counter() - start
        jpeg_rate = time_jpeg(root, records, size)
        torch.set_num_threads(2)
        cache_rate, batch = time_batches(prepared, args.p, args.k, batches=50)
        augment = BatchAugment(AugmentCfg(), channels_last=True)
        augment(batch.images)
        start = time.perf_counter()
        for _ in range(5):
            x = augment(batch.images)  # B x 3 x H x W
        augment_s = (time.perf_counter() - start) / 5
        step_s = time_train_step(x, batch.labels, args.steps)
    batch_size = args.p * args.k
    data_s = batch_size / cache_rate + augment_s
    jpeg_s = batch_size / jpeg_rate + augment_s
    report = {
        "images": len(records), "size": list(size), "batch": batch_size,
        "jpeg_decode_resize_img_s_per_core": round(jpeg_rate, 1),
        "prepare_img_s": round(len(records) / prepare_s, 1),
        "cache_batches_img_s": round(cache_rate, 1),
        "cache_vs_jpeg_speedup": round(cache_rate / jpeg_rate, 1),
        "augment_ms_per_batch": round(augment_s * 1e3, 1),
        "train_step_ms": round(step_s * 1e3, 1),
        "train_model": "anet r18-ibn fp32 channels_last, CE on f_logits, Adam",
        "data_wait_share": round(data_s / (data_s + step_s), 4),
        "jpeg_wait_share": round(jpeg_s / (jpeg_s + step_s), 4),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
