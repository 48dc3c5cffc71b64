"""``make bench``: run each benchmark in its own process and collect their JSON reports.

    python -m bench.run                 # data, eval, train, search, rerank
    python -m bench.run --only eval     # one of them
    make bench ARGS="--only train"

Timings on a shared machine are noisy: every benchmark reports ratios against a baseline measured
in the same process run (JPEG decoding for the loader, the bare matmul for the evaluator, fp32
NCHW for training), and those ratios are what the README quotes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BENCHES = {"data": "bench.data_bench", "eval": "bench.eval_bench", "train": "bench.train_bench",
           "search": "bench.search_bench", "rerank": "bench.rerank_bench",
           "gpu": "bench.gpu_bench"}  # on a CPU-only machine: a tiny run of the same code, said so


def run_one(module: str, extra: list[str]) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *extra], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1], "seconds": elapsed}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1]) if lines else {"stdout": proc.stdout[-2000:]}
    report["seconds"] = round(elapsed, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma list of: " + ", ".join(BENCHES))
    parser.add_argument("--out", default="bench/results")
    args, extra = parser.parse_known_args(argv)
    results = {}
    for name in args.only.split(","):
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHES)}")
        print(f"== {name} ==", flush=True)
        results[name] = run_one(BENCHES[name], extra)
        print(json.dumps(results[name], indent=2), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("bench-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"written {path}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
