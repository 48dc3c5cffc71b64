"""Exact re-ranking at VeRi-Wild scale: time as a ratio to the plain evaluator, and peak memory.

Not a test. The plain evaluator and the re-ranked one score the same features in the same run,
each in a fresh subprocess so ``ru_maxrss`` is clean::

    .venv/bin/python -m bench.rerank_bench                    # large: 10,000 x 128,517 x 512
    .venv/bin/python -m bench.rerank_bench --shape moderate   # 2,000 x 20,000 (a quick look)
    make bench ARGS="--only rerank"

Data: the evaluator benchmark's synthetic features (bench/eval_bench.py, same seed and file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from anet.evaluation.ranking import rank_metrics
from anet.evaluation.rerank import rerank_metrics
from bench.eval_bench import DIM, make_data

SHAPES = {"moderate": (2_000, 20_000), "small": (10_000, 38_861), "large": (10_000, 128_517)}


def _worker(mode: str, data: Path, block_size: int) -> dict:
    """One measurement in this (fresh) process: timings, peak RSS, metrics."""
    import torch

    arrays = dict(np.load(data))
    qf, gf = torch.from_numpy(arrays["query_feats"]), torch.from_numpy(arrays["gallery_feats"])
    setup_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    score = rerank_metrics if mode == "rerank" else rank_metrics
    r = score(qf, arrays["query_ids"], arrays["query_cams"], gf, arrays["gallery_ids"], arrays["gallery_cams"],
              max_rank=50, block_size=block_size)
    out = {k: round(v, 6) for k, v in r.as_dict().items()}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["cpu_seconds"] = round(time.process_time() - c0, 3)
    out["setup_rss_mb"] = round(setup_mb)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _run_worker(mode: str, data: Path, block_size: int) -> dict:
    cmd = [sys.executable, "-m", "bench.rerank_bench", "--worker", mode, "--data", str(data),
           "--block-size", str(block_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print one JSON object: plain and re-ranked timings, their ratio, peak RSS, both metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="large")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--worker", choices=["eval", "rerank"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.block_size)))
        return 0
    n_query, n_gallery = SHAPES[args.shape]
    data = args.data_dir / f"anet_eval_bench_{args.shape}.npz"  # the evaluator benchmark's file
    if not data.exists():
        make_data(n_query, n_gallery, data)
    plain = _run_worker("eval", data, args.block_size)
    rerank = _run_worker("rerank", data, args.block_size)
    keys = ("mAP", "R1", "mINP", "num_valid")
    report = {
        "shape": [n_query, n_gallery, DIM], "block_size": args.block_size, "k1_k2_lambda": [20, 6, 0.3],
        "allocator": os.environ.get("LD_PRELOAD", "") or "glibc", "cpus": os.cpu_count(),
        "eval_s": plain["seconds"], "rerank_s": rerank["seconds"],
        "ratio": round(rerank["seconds"] / plain["seconds"], 2),
        "cpu_ratio": round(rerank["cpu_seconds"] / plain["cpu_seconds"], 2),
        "eval_peak_rss_mb": plain["peak_rss_mb"], "rerank_peak_rss_mb": rerank["peak_rss_mb"],
        "setup_rss_mb": rerank["setup_rss_mb"], "load_avg_1m": round(os.getloadavg()[0], 2),
        "metrics": {k: plain[k] for k in keys}, "rerank_metrics": {k: rerank[k] for k in keys},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
