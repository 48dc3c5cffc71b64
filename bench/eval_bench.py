"""Evaluator speed and memory at VeRi-Wild scale, next to the bare query x gallery matmul.

Not a test. Each measurement runs in a fresh subprocess so ``ru_maxrss`` is clean::

    .venv/bin/python -m bench.eval_bench                      # large: 10,000 x 128,517 x 512
    .venv/bin/python -m bench.eval_bench --shape small        # 10,000 x 38,861
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 .venv/bin/python -m bench.eval_bench

Synthetic data as in /work/shared/research/cpu-perf-notes.md section 3: one query per id, 3 gallery
images per query id plus extras (~3.9 same-id items per query), the rest of the gallery from
distractor ids, 174 cameras, features ``normalize(center_id + N(0, 2.2^2/512))``.
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

SHAPES = {"small": (10_000, 38_861), "large": (10_000, 128_517)}
DIM = 512


def make_data(n_query: int, n_gallery: int, path: Path, seed: int = 0) -> None:
    """Write the synthetic features/ids/cams to ``path`` (.npz, uncompressed)."""
    gen = np.random.default_rng(seed)
    extra = min(int(0.89 * n_query), n_gallery - 3 * n_query)
    n_distract = n_gallery - 3 * n_query - extra
    distract_ids = n_query + gen.integers(0, max(1, n_distract // 3), n_distract)
    g_ids = np.concatenate([np.repeat(np.arange(n_query), 3), gen.integers(0, n_query, extra), distract_ids])
    q_ids = np.arange(n_query)
    n_centers = int(g_ids.max()) + 1
    centers = gen.standard_normal((n_centers, DIM), dtype=np.float32) / np.sqrt(DIM, dtype=np.float32)
    sigma = np.float32(2.2 / np.sqrt(DIM))

    def feats(ids: np.ndarray) -> np.ndarray:
        x = centers[ids] + sigma * gen.standard_normal((len(ids), DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    np.savez(
        path,
        query_feats=feats(q_ids), query_ids=q_ids, query_cams=gen.integers(0, 174, n_query),
        gallery_feats=feats(g_ids), gallery_ids=g_ids, gallery_cams=gen.integers(0, 174, len(g_ids)),
    )


def _worker(mode: str, data: Path, block_size: int) -> dict:
    """Run one measurement in this (fresh) process; returns timings and peak RSS."""
    import torch

    arrays = dict(np.load(data))
    qf, gf = torch.from_numpy(arrays["query_feats"]), torch.from_numpy(arrays["gallery_feats"])
    setup_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict = {}
    if mode == "matmul":
        buf = torch.empty(min(block_size, len(qf)), len(gf))  # B x G, reused
        for start in range(0, len(qf), block_size):
            stop = min(start + block_size, len(qf))
            torch.mm(qf[start:stop], gf.t(), out=buf[: stop - start])
    else:

        r = rank_metrics(
            qf, arrays["query_ids"], arrays["query_cams"], gf, arrays["gallery_ids"],
            arrays["gallery_cams"], max_rank=50, block_size=block_size,
        )
        out = {k: round(v, 6) for k, v in r.as_dict().items()}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["cpu_seconds"] = round(time.process_time() - c0, 3)  # robust-ish to other load on the box
    out["setup_rss_mb"] = round(setup_mb)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _run_worker(mode: str, data: Path, block_size: int) -> dict:
    cmd = [sys.executable, "-m", "bench.eval_bench", "--worker", mode, "--data", str(data),
           "--block-size", str(block_size)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print one JSON object: evaluator and matmul timings, ratio, peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="large")
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--worker", choices=["eval", "matmul"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.block_size)))
        return 0
    n_query, n_gallery = SHAPES[args.shape]
    data = args.data_dir / f"anet_eval_bench_{args.shape}.npz"
    if not data.exists():
        make_data(n_query, n_gallery, data)
    runs = []
    for _ in range(args.repeats):  # interleaved so background load hits both alike
        runs.append((_run_worker("matmul", data, args.block_size), _run_worker("eval", data, args.block_size)))
    mm_s = float(np.median([m["seconds"] for m, _ in runs]))
    ev_s = float(np.median([e["seconds"] for _, e in runs]))
    report = {
        "shape": [n_query, n_gallery, DIM], "block_size": args.block_size,
        "allocator": os.environ.get("LD_PRELOAD", "") or "glibc",
        "matmul_s": [m["seconds"] for m, _ in runs], "eval_s": [e["seconds"] for _, e in runs],
        "ratio_median": round(ev_s / mm_s, 3),
        "matmul_cpu_s": [m["cpu_seconds"] for m, _ in runs], "eval_cpu_s": [e["cpu_seconds"] for _, e in runs],
        "cpu_ratio_median": round(float(np.median([e["cpu_seconds"] for _, e in runs]))
                                  / float(np.median([m["cpu_seconds"] for m, _ in runs])), 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "eval_peak_rss_mb": max(e["peak_rss_mb"] for _, e in runs),
        "eval_setup_rss_mb": runs[-1][1]["setup_rss_mb"],
        "matmul_peak_rss_mb": max(m["peak_rss_mb"] for m, _ in runs),
        "metrics": {k: v for k, v in runs[-1][1].items() if k not in {"seconds", "cpu_seconds", "peak_rss_mb", "setup_rss_mb"}},
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
