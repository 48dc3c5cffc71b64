"""The served model's body: images -> retrieval embedding + attribute probabilities with their names.

Input is a batch of encoded images (JPEG / PNG bytes, or base64 text of them) or uint8 H x W x 3 arrays; each
is decoded and resized exactly as the prepared cache does (:func:`anet.data.images.decode_resize`), normalised
with the training config's mean / std (``TestTransform``) and run through
:class:`anet.model.embedder.ReidEmbedder`. So an image of the prepared cache gets the same feature here as in
evaluation. Everything the predictor needs is in three files (the MLflow model's artifacts, written by
:func:`anet.search.served.write_artifacts`): a slim checkpoint, ``preprocess.json`` (image size, mean, std,
feature, flip) and ``vocab.json`` (class names per attribute, the prepared dataset's vocabularies). This
module is what a served model imports at load time, so it stays light (no matplotlib, no mlflow).

Example:
    >>> predictor = ReidPredictor.from_dir("out/artifacts")      # model.pt, preprocess.json, vocab.json
    >>> frame = predictor.predict(pd.DataFrame({"image": [Path("car.jpg").read_bytes()]}))
    >>> frame.loc[0, "color"], frame.loc[0, "color_confidence"], len(frame.loc[0, "embedding"])
    ('red', 0.93, 512)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from anet.config import AugmentCfg
from anet.data.augment import TestTransform
from anet.data.images import decode_resize
from anet.errors import UserError
from anet.model.checkpoint_io import load_model_from_checkpoint
from anet.model.embedder import ReidEmbedder

CHECKPOINT, PREPROCESS, VOCAB = "checkpoint", "preprocess", "vocab"  # artifact names
FILES = {CHECKPOINT: "model.pt", PREPROCESS: "preprocess.json", VOCAB: "vocab.json"}
IMAGE_COLUMN = "image"
BATCH = 64


@dataclass(frozen=True)
class Predictions:
    """Model outputs of N images, in input order."""

    embeddings: np.ndarray  # float32 N x D, L2-normalised
    probs: dict[str, np.ndarray]  # attribute -> float32 N x m_i


class ReidPredictor:
    """Images -> :class:`Predictions` (arrays) or a frame (what MLflow serves). See the module docstring."""

    def __init__(self, embedder: ReidEmbedder, image_size: tuple[int, int], transform: TestTransform,
                 vocab: dict[str, list[str]]):
        self.embedder, self.image_size, self.transform, self.vocab = embedder.eval(), image_size, transform, vocab

    @classmethod
    def from_artifacts(cls, paths: Mapping[str, str]) -> ReidPredictor:
        """Build from ``{"checkpoint", "preprocess", "vocab"}`` file paths (MLflow's ``context.artifacts``)."""
        pre = json.loads(Path(paths[PREPROCESS]).read_text())
        vocab = {str(k): [str(c) for c in v] for k, v in json.loads(Path(paths[VOCAB]).read_text()).items()}
        augment = AugmentCfg(mean=tuple(pre["mean"]), std=tuple(pre["std"]))  # only mean / std are used
        embedder = ReidEmbedder(load_model_from_checkpoint(paths[CHECKPOINT]), pre["feature"], bool(pre["flip"]))
        return cls(embedder, (int(pre["image_size"][0]), int(pre["image_size"][1])), TestTransform(augment), vocab)

    @classmethod
    def from_dir(cls, folder: str | Path) -> ReidPredictor:
        """Build from a folder holding the three files (what :func:`write_artifacts` wrote)."""
        return cls.from_artifacts({name: str(Path(folder) / file) for name, file in FILES.items()})

    @property
    def feature(self) -> str:
        """The retrieval feature the embeddings are (f | fa | j)."""
        return self.embedder.feature

    def to_array(self, item: Any, where: str = "image") -> np.ndarray:
        """One input (bytes, base64 text, or a uint8 H x W x 3 array) -> uint8 h x w x 3 at the model's size."""
        h, w = self.image_size
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                raise UserError(f"{where}: expected a uint8 H x W x 3 array, got {item.dtype} {item.shape}")
            if item.shape[:2] == (h, w):
                return item
            return np.asarray(Image.fromarray(item).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
        data = _as_bytes(item, where)
        pixels, reason = decode_resize(data, (h, w))
        if pixels is None:
            raise UserError(f"{where}: not a usable image ({reason})")
        return pixels

    def embed_arrays(self, images: np.ndarray) -> Predictions:
        """uint8 N x h x w x 3 at the model's size -> :class:`Predictions`, in batches of ``BATCH``."""
        names = self.embedder.model.attr_names
        outs = [self.embedder(self.transform(torch.from_numpy(np.array(images[s:s + BATCH]))))  # a writable copy
                for s in range(0, len(images), BATCH)]  # each: B x D and B x m_i
        if not outs:
            return Predictions(np.zeros((0, 0), np.float32),
                               {n: np.zeros((0, len(self.vocab[n])), np.float32) for n in names})
        return Predictions(np.concatenate([o.embedding.numpy() for o in outs]),
                           {n: np.concatenate([o.attr_probs[n].numpy() for o in outs]) for n in names})

    def predict_images(self, items: Sequence[Any]) -> Predictions:
        """Decode / resize every input, then :meth:`embed_arrays`."""
        h, w = self.image_size
        arrays = [self.to_array(item, f"image {i}") for i, item in enumerate(items)]
        stacked = np.stack(arrays) if arrays else np.zeros((0, h, w, 3), np.uint8)
        return self.embed_arrays(stacked)

    def predict(self, model_input: pd.DataFrame | Sequence[Any]) -> pd.DataFrame:
        """A frame with column ``image`` (or a sequence of images) -> one row per image.

        Columns: ``embedding`` (list of D floats), and per attribute ``<name>`` (the most likely class
        name), ``<name>_confidence`` (its probability) and ``<name>_probs`` ({class name: probability}).
        """
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise UserError(f"input has columns {list(model_input.columns)}; expected one named {IMAGE_COLUMN!r}")
            model_input = model_input[IMAGE_COLUMN].tolist()
        return self.frame(self.predict_images(list(model_input)))

    def frame(self, predictions: Predictions) -> pd.DataFrame:
        """:class:`Predictions` -> the served frame (see :meth:`predict`)."""
        out: dict[str, list[Any]] = {"embedding": [row.tolist() for row in predictions.embeddings]}
        for name, probs in predictions.probs.items():
            classes = self.vocab[name]
            best = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
            out[name] = [classes[i] for i in best]
            out[f"{name}_confidence"] = [float(p[i]) for p, i in zip(probs, best, strict=True)]
            out[f"{name}_probs"] = [dict(zip(classes, map(float, p), strict=True)) for p in probs]
        return pd.DataFrame(out)


def _as_bytes(item: Any, where: str) -> bytes:
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    if isinstance(item, str):  # base64, as MLflow's JSON serving carries binary columns
        try:
            return base64.b64decode(item.split(",", 1)[-1] if item.startswith("data:") else item, validate=False)
        except (binascii.Error, ValueError):
            raise UserError(f"{where}: text that is not base64 image data") from None
    raise UserError(f"{where}: expected image bytes, base64 text or a uint8 H x W x 3 array, got {type(item).__name__}")
