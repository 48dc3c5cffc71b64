"""Load pretrained backbone weights (IBN-Net / FastReID / torchvision layouts) with one clear error.

Local files only (a path or a ``file://`` URL), always read with ``torch.load(weights_only=True)``;
``http(s)://`` and ``s3://`` sources are fetched and hash-checked beforehand by
:func:`anet.mlops.storage.pretrained.resolve_pretrained`, which returns the local path to pass here. Accepted files:

* a plain state dict (IBN-Net v1.0 release ``resnet50_ibn_a-d9d0bb7b.pth``, torchvision ResNet);
* ``{'state_dict': ...}`` whose keys may carry ``module.`` (IBN-Net 2018 ``.pth.tar``);
* ``{'model': ...}`` (FastReID full checkpoints: only ``backbone.*`` keys are used; also our own ANet
  checkpoints, whose backbone lives under ``backbone.``).

``fc.*`` (the ImageNet classifier) is dropped. Anything else that does not match the model is reported
in ONE :class:`~anet.errors.UserError` line.

Example:
    >>> backbone = build_backbone(50, ibn=True)
    >>> weights = resolve_pretrained(IBN_NET_R50_URL)      # anet.mlops.storage.pretrained: download once, verify
    >>> load_backbone_weights(backbone, weights.path)
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from anet.errors import UserError

_PREFIXES = ("module.",)


def load_backbone_weights(backbone: nn.Module, path_or_url: str | Path) -> list[str]:
    """Load a local weight file (path or file:// URL) into ``backbone``; return the keys that were ignored.

    Raises:
        UserError: a remote source, an unreadable file, no state dict inside, or keys/shapes that do not match.
    """
    source = str(path_or_url)
    raw = _read(source)
    state, ignored = _extract_state_dict(raw, source)
    expected = backbone.state_dict()
    _check_compatible(state, expected, source)
    for key, value in expected.items():  # pre-1.0 files lack BN counters; keep the model's
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    backbone.load_state_dict(state, strict=True)
    return ignored


def _read(source: str) -> object:
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in {"http", "https", "s3"}:  # no network here: the caller resolves it first (pre-flight)
        raise UserError(f"{source}: load_backbone_weights reads local files only; resolve the source with "
                        "anet.mlops.storage.pretrained.resolve_pretrained and pass the returned path")
    path = Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path)) if scheme == "file" \
        else Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such weights file (model.pretrained); give an existing path or URL")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable PyTorch weights file ({_short(exc)}); "
                        "model.pretrained needs a .pth state dict saved with torch.save") from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _extract_state_dict(raw: object, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Unwrap ``state_dict``/``model`` containers, strip prefixes, drop ``fc.*`` and head keys."""
    if isinstance(raw, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(raw.get(wrapper), Mapping):
                raw = raw[wrapper]
                break
    if not isinstance(raw, Mapping) or not any(isinstance(v, torch.Tensor) for v in raw.values()):
        kind = f"keys {sorted(map(str, raw))[:5]}" if isinstance(raw, Mapping) else type(raw).__name__
        raise UserError(f"{source}: no state dict found ({kind}); expected a state dict, "
                        "{'state_dict': ...} or {'model': ...}")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in state):  # FastReID / ANet full checkpoint
        ignored += [k for k in state if not k.startswith("backbone.")]
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    ignored += [k for k in state if k.startswith("fc.")]
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, ignored


def _check_compatible(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                      source: str) -> None:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if not (missing or unexpected or mismatched):
        return
    hint = _layout_hint(state, expected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
                     f"vs model {tuple(expected[k].shape)})")
    raise UserError(f"{source}: weights do not fit the backbone: {hint}{'; '.join(parts)}")


def _layout_hint(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """Name the usual causes: plain vs IBN-a ResNet, and BasicBlock vs Bottleneck depth."""
    model_ibn = "layer1.0.bn1.IN.weight" in expected
    file_ibn = any(".bn1.IN." in k for k in state)
    file_plain = "layer1.0.bn1.weight" in state
    if model_ibn and file_plain and not file_ibn:
        return ("this file has plain ResNet keys (layer1.0.bn1.weight) but the model is IBN-a "
                "(expects layer1.0.bn1.IN.weight); set model.ibn=false or use IBN-Net weights; ")
    if not model_ibn and file_ibn:
        return ("this file has IBN-a keys (layer1.0.bn1.IN.weight) but the model is a plain ResNet; "
                "set model.ibn=true or use plain ResNet weights; ")
    file_bottleneck = "layer1.0.conv3.weight" in state
    model_bottleneck = "layer1.0.conv3.weight" in expected
    if file_bottleneck != model_bottleneck:
        file_kind = "Bottleneck (depth 50/101)" if file_bottleneck else "BasicBlock (depth 18/34)"
        return f"this file is a {file_kind} ResNet; set model.depth to match it; "
    n_file, n_model = _blocks_in_layer3(state), _blocks_in_layer3(expected)
    if n_file != n_model:
        return f"this file has {n_file} blocks in layer3, the model {n_model}; set model.depth to match it; "
    return ""


def _blocks_in_layer3(keys: Mapping[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in keys if k.startswith("layer3.")})
