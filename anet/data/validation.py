"""A validation split of held-out training identities: what model selection looks at.

Sweeps, pruning and the promotion gate must never look at the test split (the paper's Table 4 picks
lambdas on the test set; ``registry.selection: test`` reproduces that and is tagged so). This module
moves ``val_ids`` training identities, chosen by ``val_seed``, into test set ``"val"``, built like the
dataset's own test protocol:

* query/gallery datasets (synthetic, VeRi-776, VeRi-Wild): per held-out identity and camera one
  random image is a query, every other image of the identity is gallery; the evaluator's junk rule
  (same identity, same camera) then applies as on the test split;
* VehicleID: the held-out rows are ``split == "test"`` and the evaluator draws one gallery image per
  identity per trial, as on its test sets.

The remaining training rows are relabelled 0..n-1 (held-out rows get -1), so the model never sees a
validation identity.

Example:
    >>> manifest = hold_out_validation(manifest, val_ids=20, seed=0)
    >>> manifest.frame.query("test_set == 'val'")["split"].unique()
    array(['query', 'gallery'], dtype=object)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from anet.data.manifest import Manifest, vid_sort_key
from anet.errors import UserError

VAL = "val"


def hold_out_validation(manifest: Manifest, val_ids: int, seed: int) -> Manifest:
    """A copy of ``manifest`` with ``val_ids`` training identities moved to test set ``"val"``."""
    if val_ids <= 0:
        return manifest
    frame = manifest.frame.copy()
    train = frame["split"] == "train"
    vids = sorted(set(frame.loc[train, "vid"]), key=vid_sort_key)
    if val_ids >= len(vids) - 1:
        raise UserError(f"data.val_ids={val_ids}: the training split has only {len(vids)} identities; "
                        "hold out fewer (training needs at least 2)")
    rng = np.random.default_rng([seed, 1729])
    held = set(rng.choice(np.array(vids, dtype=object), size=val_ids, replace=False).tolist())
    moved = train & frame["vid"].isin(held)
    frame.loc[moved, "test_set"] = VAL
    if manifest.dataset == "vehicleid":
        frame.loc[moved, "split"] = "test"
    else:
        frame.loc[moved, "split"] = _query_or_gallery(frame.loc[moved], rng)
    kept = sorted(set(frame.loc[frame["split"] == "train", "vid"]), key=vid_sort_key)
    label_of = {vid: i for i, vid in enumerate(kept)}
    frame["label"] = [label_of.get(v, -1) if s == "train" else -1 for v, s in zip(frame["vid"], frame["split"],
                                                                                  strict=True)]
    frame["label"] = frame["label"].astype("int64")
    return dataclasses.replace(manifest, frame=frame)


def _query_or_gallery(rows: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """One random query per (identity, camera); the rest of the identity's images are gallery."""
    order = rng.permutation(len(rows))
    shuffled = rows.iloc[order]
    first = ~shuffled.duplicated(subset=["vid", "camid"])
    is_query = np.zeros(len(rows), dtype=bool)
    is_query[order[first.to_numpy()]] = True
    return ["query" if q else "gallery" for q in is_query]
