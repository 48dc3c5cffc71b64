"""Search at scale: index-build throughput of the served model, query latency, the ANN option's recall.

Not a test. Each part runs in a fresh subprocess, so its peak RSS is its own::

    .venv/bin/python -m bench.search_bench                       # synthetic profile model, 10k and 100k items
    .venv/bin/python -m bench.search_bench --profile veri776     # R50-IBN at 256 px (slow on a CPU)
    make bench ARGS="--only search"

* ``embed``: images / s of :class:`anet.search.predictor.ReidPredictor` on this CPU (random weights
  of the profile's model; speed does not depend on them), from uint8 arrays (what ``anet index
  --split`` embeds) and from JPEG bytes (``--folder``, the served model: decoding included).
* ``search``: per size, the median latency of one query (k = 20) against an exact ``IndexFlatIP``,
  with and without a filter keeping ~10 % of the items, next to the bare numpy product ``G @ q``
  (the floor: every exact search reads the whole matrix once); and the HNSW index (``--ann``):
  build time, and latency and recall@10 against exact search for several ``efSearch``. The gallery
  is random unit vectors around identities (4 images each, as re-ID galleries are), the queries
  other images of them. One query runs on one thread (``--search-threads``): on a shared 2-core
  machine OpenMP's thread team cost more than it saved.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM, K, QUERIES = 512, 20, 200
EF_SEARCH = (64, 128, 256, 512)  # HNSW search breadth: recall against latency


def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def embed_worker(profile: str, n_images: int) -> dict:
    """Images / s of the served predictor, from arrays and from JPEG bytes, with the profile's model."""
    import torch
    from PIL import Image

    from anet.config import load_config  # lazy: the worker process alone pays for torch + the model
    from anet.search.predictor import ReidPredictor  # lazy: as above
    from anet.search.served import write_artifacts  # lazy: as above

    cfg = load_config(profile, ["model.pretrained=null"])
    h, w = cfg.data.image_size
    with tempfile.TemporaryDirectory() as tmp:
        _random_checkpoint(cfg, Path(tmp) / "final.pt")
        predictor = ReidPredictor.from_artifacts(write_artifacts(Path(tmp) / "final.pt", cfg,
                                                                 {"color": ["c"] * 10, "type": ["t"] * 9}, tmp))
    gen = np.random.default_rng(0)
    images = gen.integers(0, 256, (n_images, h, w, 3), dtype=np.uint8)
    jpegs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    predictor.embed_arrays(images[:8])  # warm-up (oneDNN picks its kernels)
    t0 = time.perf_counter()
    predictor.embed_arrays(images)
    arrays_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor.predict_images(jpegs)
    jpeg_s = time.perf_counter() - t0
    return {"profile": profile, "image_size": [h, w], "depth": cfg.model.depth, "threads": torch.get_num_threads(),
            "images": n_images, "arrays_per_s": round(n_images / arrays_s, 1),
            "jpeg_per_s": round(n_images / jpeg_s, 1), "peak_rss_mb": _peak_mb()}


def _random_checkpoint(cfg: object, path: Path) -> None:
    import torch

    from anet.model import build_model  # lazy: the worker process alone pays for torch + the model

    model = build_model(cfg.model, 100, {"color": 10, "type": 9})
    torch.save({"model": model.state_dict(), "num_ids": 100, "attr_classes": {"color": 10, "type": 9},
                "model_cfg": cfg.model.model_dump(mode="json")}, path)


def gallery(n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around n/4 identities (gallery N x D) and queries: other images of some of them."""
    gen = np.random.default_rng(seed)
    ids = np.arange(n_items) // 4
    centers = gen.standard_normal((ids[-1] + 1, DIM), dtype=np.float32)
    noise = np.float32(0.8)  # same-id cosine ~0.6, different ids ~0: like a trained re-ID model

    def sample(which: np.ndarray) -> np.ndarray:
        x = centers[which] + noise * gen.standard_normal((len(which), DIM), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return sample(ids), sample(gen.choice(ids, QUERIES))


def search_worker(n_items: int) -> dict:
    """Latency of one query against N items: numpy floor, exact faiss (plain, filtered), HNSW + recall@10."""
    import faiss

    from anet.search.index import build_faiss  # lazy: only the search worker needs faiss

    g, queries = gallery(n_items)
    setup_mb = _peak_mb()
    floor = _median_latency(lambda q: g @ q, queries)
    t0 = time.perf_counter()
    flat = build_faiss(g, ann=False)
    flat_build = time.perf_counter() - t0
    exact = _median_latency(lambda q: flat.search(q[None], K), queries)
    keep = faiss.IDSelectorBatch(np.arange(0, n_items, 10, dtype=np.int64))
    filtered = _median_latency(lambda q: flat.search(q[None], K, params=faiss.SearchParameters(sel=keep)), queries)
    flat_mb = _peak_mb()
    t0 = time.perf_counter()
    hnsw = build_faiss(g, ann=True)
    hnsw_build = time.perf_counter() - t0
    _, truth = flat.search(queries, 10)
    ann = {}
    for ef in EF_SEARCH:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        _, approx = hnsw.search(queries, 10, params=params)
        recall = float(np.mean([len(set(a) & set(t)) / 10 for a, t in zip(approx, truth, strict=True)]))
        ann[f"ef{ef}"] = {"ms": _median_latency(lambda q, p=params: hnsw.search(q[None], K, params=p), queries),
                          "recall_at_10": round(recall, 4)}
    return {"items": n_items, "dim": DIM, "threads": faiss.omp_get_max_threads(), "numpy_matvec_ms": floor,
            "exact_ms": exact, "exact_over_numpy": round(exact / floor, 2), "exact_filtered_10pct_ms": filtered,
            "flat_build_s": round(flat_build, 3), "hnsw_build_s": round(hnsw_build, 2), "hnsw": ann,
            "setup_rss_mb": setup_mb, "flat_peak_rss_mb": flat_mb, "peak_rss_mb": _peak_mb()}


def _median_latency(call: object, queries: np.ndarray) -> float:
    for q in queries[:5]:  # warm-up
        call(q)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        call(q)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 3)


def _run_worker(*args: str, threads: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "bench.search_bench", "--worker", *args]
    env = os.environ.copy() | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print one JSON object: embedding throughput and, per gallery size, search latencies and recall."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="synthetic", help="config profile whose model is timed")
    parser.add_argument("--images", type=int, default=256, help="images embedded for the throughput")
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes (comma list)")
    parser.add_argument("--search-threads", type=int, default=1,
                        help="OpenMP / BLAS threads for the one-query latencies (default 1: see the README)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = args.worker
        out = embed_worker(rest[0], int(rest[1])) if kind == "embed" else search_worker(int(rest[0]))
        print(json.dumps(out))
        return 0
    report = {"embed": _run_worker("embed", args.profile, str(args.images)),
              "search": [_run_worker("search", size, threads=args.search_threads) for size in args.sizes.split(",")],
              "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
