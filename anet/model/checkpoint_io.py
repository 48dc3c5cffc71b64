"""Read a training checkpoint back: the raw dict, or the model it was trained as.

Checkpoints are written by :mod:`anet.train.checkpoint`; reading them back is a model concern, so
evaluation, registration and serving rebuild a model without importing the training package.
Every read is ``torch.load(weights_only=True)``.

Example:
    >>> model = load_model_from_checkpoint("runs/demo/stage_two/final.pt")   # eval mode, CPU
    >>> feats = model.embed(images, feature="j")
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anet.config import ModelCfg
from anet.errors import UserError
from anet.model.anet import build_model


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line UserError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; pass the final.pt (or last.pt) a training stage wrote")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's multi-line advice (load it unsafely) is not ours to give
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle of objects: garbage, a torn file
            raise UserError(f"{path}: not a readable anet checkpoint (not a torch file of tensors)") from None
        raise UserError(f"{path}: a pickled checkpoint that runs code to load (it holds {found[1]}); anet reads "
                        "only tensors and plain values (weights_only=True): pass a checkpoint anet wrote, "
                        "or re-save its state_dict as plain tensors where you trust the file") from None
    except Exception as exc:  # noqa: BLE001 - corrupt/foreign files become one readable line
        raise UserError(f"{path}: not a readable anet checkpoint ({_first_line(exc)})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError(f"{path}: not an anet checkpoint (no 'model' entry)")
    return ckpt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def load_model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the ANet a checkpoint was trained as (model cfg, num_ids, attr_classes), in eval mode.

    Example:
        >>> model = load_model_from_checkpoint("runs/demo/stage_one/final.pt")
        >>> feats = model.embed(images, feature="j")
    """
    ckpt = read_checkpoint(path, map_location)
    if not ckpt.get("model_cfg"):
        raise UserError(f"{path}: the checkpoint has no model config (trained without config=); cannot rebuild")
    cfg = ModelCfg.model_validate({**ckpt["model_cfg"], "pretrained": None})  # weights come from ckpt
    model = build_model(cfg, int(ckpt["num_ids"]), dict(ckpt["attr_classes"]))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval()
