"""Compile the pipeline to Kubeflow's IR YAML.

Example::

    python -m pipelines.compile --output pipelines/anet_pipeline.yaml            # make pipeline-compile
    ANET_IMAGE=registry.local/anet:0.1.0 python -m pipelines.compile --gpus 4 --output /tmp/anet.yaml

``ANET_IMAGE`` must be set in the environment before this module runs: components read it when they
are imported (see :mod:`components`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from components import IMAGE
from pipelines.dag import make_pipeline


def compile_pipeline(output: str | Path, gpus: int = 1) -> Path:
    """Write the IR YAML for a pipeline with ``gpus`` GPUs per train task; returns the path."""
    from kfp import compiler


    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(make_pipeline(gpus=gpus), str(output))
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="pipelines/anet_pipeline.yaml", help="where to write the YAML")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per train task (>1: torchrun DDP)")
    args = parser.parse_args(argv)
    if args.gpus < 0:
        parser.error("--gpus must be >= 0")
    path = compile_pipeline(args.output, gpus=args.gpus)

    print(f"wrote {path} (image {IMAGE}, {args.gpus} GPU(s) per train task)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
