"""``anet evaluate`` and ``anet evaluate-features``.

Examples::

    anet evaluate-features feats.npz --max-rank 50
    anet evaluate --checkpoint runs/x/stage_two/final.pt --cache .cache/anet/veri776-ab12 --flip --out runs/x/eval
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from anet.config import load_config
from anet.errors import UserError
from anet.evaluation.ranking import rank_metrics
from anet.evaluation.rerank import rerank_metrics
from anet.evaluation.run import evaluate_checkpoint
from anet.steps.preflight import check_writable

FEATURE_ARRAYS = ("query_feats", "query_ids", "query_cams", "gallery_feats", "gallery_ids", "gallery_cams")

log = logging.getLogger("anet.cli.evaluate")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and ``evaluate-features`` to the top-level sub-parsers."""
    feats = sub.add_parser(
        "evaluate-features", help="score precomputed query/gallery features (any model)",
        description="Exact mAP / CMC / mINP of features in an .npz with arrays " + ", ".join(FEATURE_ARRAYS)
        + " (features are L2-normalised here; cosine distance; same-id same-camera junk removed).")
    feats.add_argument("file", type=Path, metavar="FILE.npz")
    feats.add_argument("--max-rank", type=int, default=50)
    feats.add_argument("--no-junk-removal", action="store_true", help="keep same-id same-camera gallery items")
    feats.add_argument("--block-size", type=int, default=1024, help="queries per block (memory bound)")
    feats.add_argument("--rerank", action="store_true",
                       help="also score after k-reciprocal re-ranking (keys rerank/<metric>; exact, bounded memory)")
    feats.add_argument("--k1", type=int, default=20, help="re-ranking k1 (default 20)")
    feats.add_argument("--k2", type=int, default=6, help="re-ranking k2, query expansion (default 6)")
    feats.add_argument("--lambda", dest="lambda_value", type=float, default=0.3,
                       help="re-ranking weight of the original distance (default 0.3)")
    feats.set_defaults(func=evaluate_features_command)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint on a prepared cache",
                        description="Rebuild the model of a checkpoint, embed the test images of a prepared "
                        "cache, score them with the dataset's protocol, write reports, print JSON.")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--cache", type=Path, required=True, help="prepared cache directory")
    ev.add_argument("--profile", default="synthetic", help="config profile for eval/augment/runtime settings")
    ev.add_argument("--feature", choices=("f", "fa", "j"), help="retrieval feature (default: profile's eval.feature)")
    ev.add_argument("--flip", action="store_true", help="average with the mirrored image's feature")
    ev.add_argument("--rerank", action="store_true", help="also score after re-ranking (eval.rerank, rerank/<metric>)")
    ev.add_argument("--out", type=Path, default=Path("eval_out"), help="report directory (default: eval_out)")
    ev.add_argument("--device", choices=("cpu", "cuda"), help="default: CUDA when available")
    ev.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="default: profile's runtime.precision")
    ev.set_defaults(func=evaluate_command)


def load_feature_file(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of an ``evaluate-features`` file, checked; mistakes name the array and file."""
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass an .npz with arrays {', '.join(FEATURE_ARRAYS)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in FEATURE_ARRAYS if name not in npz.files]
            if missing:
                raise UserError(f"{path}: missing array {missing[0]!r} (needs {', '.join(FEATURE_ARRAYS)})")
            arrays = {name: np.asarray(npz[name]) for name in FEATURE_ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None
    for side in ("query", "gallery"):
        f = arrays[f"{side}_feats"]
        if f.ndim != 2 or not np.issubdtype(f.dtype, np.number):
            raise UserError(f"{path}: array '{side}_feats' must be a numeric N x D matrix, got shape {f.shape}")
        for kind in ("ids", "cams"):
            a = arrays[f"{side}_{kind}"]
            if a.shape != (len(f),):
                raise UserError(f"{path}: array '{side}_{kind}' must have shape ({len(f)},) like "
                                f"'{side}_feats', got {a.shape}")
        if not np.issubdtype(arrays[f"{side}_cams"].dtype, np.integer):
            raise UserError(f"{path}: array '{side}_cams' must hold integers, got {arrays[f'{side}_cams'].dtype}")
    if arrays["query_feats"].shape[1] != arrays["gallery_feats"].shape[1]:
        raise UserError(f"{path}: array 'gallery_feats' has {arrays['gallery_feats'].shape[1]} columns but "
                        f"'query_feats' has {arrays['query_feats'].shape[1]}")
    return arrays


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def evaluate_features_command(args: argparse.Namespace) -> int:
    """``anet evaluate-features FILE.npz [--max-rank N] [--no-junk-removal] [--block-size B] [--rerank]``."""

    if args.max_rank < 1 or args.block_size < 1:
        raise UserError("--max-rank and --block-size must be >= 1")
    if args.rerank and (args.k1 < 1 or args.k2 < 1 or not 0.0 <= args.lambda_value <= 1.0):
        raise UserError("--k1 and --k2 must be >= 1 and --lambda within [0, 1]")
    a = load_feature_file(args.file)

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    result = rank_metrics(unit(a["query_feats"]), a["query_ids"], a["query_cams"], unit(a["gallery_feats"]),
                          a["gallery_ids"], a["gallery_cams"], max_rank=args.max_rank,
                          junk_same_camera=not args.no_junk_removal, block_size=args.block_size)
    out = {k: (int(v) if k.startswith("num_") else v) for k, v in result.as_dict().items()}
    if args.rerank:
        rr = rerank_metrics(unit(a["query_feats"]), a["query_ids"], a["query_cams"], unit(a["gallery_feats"]),
                            a["gallery_ids"], a["gallery_cams"], k1=args.k1, k2=args.k2,
                            lambda_value=args.lambda_value, max_rank=args.max_rank,
                            junk_same_camera=not args.no_junk_removal, block_size=args.block_size)
        out.update({f"rerank/{k}": (int(v) if k.startswith("num_") else v) for k, v in rr.as_dict().items()})
    print(json.dumps(_json_safe(out)))
    if result.num_valid == 0:
        raise UserError(f"{args.file}: {result.warning}; check the ids/cams arrays (or use --no-junk-removal)")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """``anet evaluate --checkpoint CKPT --cache DIR [--feature j] [--flip] [--out DIR]``."""

    if not args.checkpoint.is_file():
        raise UserError(f"{args.checkpoint}: no such checkpoint file")
    check_writable(args.out, "--out")  # else a PermissionError after embedding every test image
    overrides = [f"eval.feature={args.feature}"] if args.feature else []
    overrides += ["eval.flip=true"] if args.flip else []
    overrides += ["eval.rerank.enabled=true"] if args.rerank else []
    cfg = load_config(args.profile, overrides)
    out = evaluate_checkpoint(args.checkpoint, args.cache, cfg, args.out, device=args.device,
                              precision=args.precision)
    for line in out["warnings"]:
        log.warning("%s", line)
    print(json.dumps(_json_safe(out)))
    return 0
