"""The manifest: one table describing a dataset, whatever its on-disk layout.

Every reader (and the synthetic generator) returns a :class:`Manifest`; everything downstream
(cache, sampler, evaluator) reads only this table. Example::

    from anet.data.readers import read_dataset
    manifest = read_dataset("veri776", "data/veri776")
    manifest.save("runs/veri776/manifest.parquet")
    same = Manifest.load("runs/veri776/manifest.parquet")
    train = same.split_frame("train")            # rows with contiguous labels 0..n-1
    same.attr_classes()                          # {"color": 10, "type": 9}
    print(same.summary())                        # images / ids / cameras / coverage per test set

Frame columns: ``path`` (relative to ``root``), ``vid`` (original id as text), ``label`` (int64,
contiguous over the train split, -1 elsewhere), ``camid`` (int64, -1 unknown), ``split``
(train | query | gallery | test), ``test_set`` ("" for train), ``attr_<name>`` (int64, -1 missing).

``notes`` holds what the reader counted but did not fail on, e.g. ``{"duplicates_dropped": 3,
"images_missing": 1}`` (saved with the manifest; empty for older files and the synthetic set).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anet.errors import UserError
from anet.io import atomic_path

BASE_COLUMNS = ("path", "vid", "label", "camid", "split", "test_set")
SPLITS = ("train", "query", "gallery", "test")
ATTR_PREFIX = "attr_"
_META_KEY = b"anet.manifest"
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames with == is ambiguous; compare .frame
class Manifest:
    """A dataset as one table plus its attribute vocabularies (see the module docstring)."""

    dataset: str
    root: str
    frame: pd.DataFrame
    vocab: dict[str, list[str]]
    notes: dict[str, int] = field(default_factory=dict)  # reader counts (see the module docstring)

    def attr_classes(self) -> dict[str, int]:
        """Number of classes per attribute, e.g. ``{"color": 10, "type": 9}``."""
        return {name: len(classes) for name, classes in self.vocab.items()}

    def num_train_ids(self) -> int:
        """Number of training identities (= number of classes of the id classifier)."""
        labels = self.frame.loc[self.frame["split"] == "train", "label"]
        return int(labels.max()) + 1 if len(labels) else 0

    def split_frame(self, split: str, test_set: str | None = None) -> pd.DataFrame:
        """Rows of one split (and one test set, if given); the index keeps the row numbers of ``frame``."""
        mask = self.frame["split"] == split
        if test_set is not None:
            mask &= self.frame["test_set"] == test_set
        return self.frame.loc[mask]

    def test_sets(self) -> list[str]:
        """Test-set names in order of first appearance (``["test"]``, ``["small", "medium"]``...)."""
        names = self.frame.loc[self.frame["split"] != "train", "test_set"]
        return list(dict.fromkeys(names.tolist()))

    def summary(self) -> pd.DataFrame:
        """Counts per (split, test_set): images, ids, cameras, and per attribute the labelled fraction.

        Columns: split, test_set, images, ids, cameras, then ``cov_<name>`` (0..1) per attribute.
        ``cameras`` is 0 where cameras are unknown (VehicleID).
        """
        rows = []
        for (split, test_set), part in self.frame.groupby(["split", "test_set"], sort=False):
            row: dict[str, Any] = {
                "split": split,
                "test_set": test_set,
                "images": len(part),
                "ids": int(part["vid"].nunique()),
                "cameras": int(part.loc[part["camid"] >= 0, "camid"].nunique()),
            }
            for name in self.vocab:
                values = part[ATTR_PREFIX + name].to_numpy()
                row[f"cov_{name}"] = float(np.mean(values != -1)) if len(values) else 0.0
            rows.append(row)
        order = {name: i for i, name in enumerate(SPLITS)}
        table = pd.DataFrame(rows, columns=["split", "test_set", "images", "ids", "cameras"]
                             + [f"cov_{name}" for name in self.vocab])
        key = table["split"].map(order).fillna(len(order))
        return table.assign(_k=key).sort_values(["_k"], kind="stable").drop(columns="_k").reset_index(drop=True)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the manifest as parquet (atomically); dataset, root and vocab go in the schema metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(self.frame.reset_index(drop=True), preserve_index=False)
        meta = {"version": _FORMAT_VERSION, "dataset": self.dataset, "root": self.root, "vocab": self.vocab,
                "notes": self.notes}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               _META_KEY: json.dumps(meta).encode("utf-8")})
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest written by :meth:`save`; a missing or unreadable file is a :class:`UserError`."""
        import pyarrow.parquet as pq

        if not Path(path).is_file():
            raise UserError(f"{path}: no such manifest file; create it with `anet data inspect <dataset> "
                            f"<root> --manifest {path}`")
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
            dataset, root, raw_vocab = meta["dataset"], meta["root"], meta["vocab"]
        except KeyError:
            raise UserError(f"{path}: a parquet file but not an anet manifest (no dataset/vocab metadata); "
                            "regenerate it") from None
        except Exception as exc:  # pyarrow raises several types for truncated or foreign files
            raise UserError(f"{path}: not a readable manifest ({type(exc).__name__}: {exc}); "
                            "delete it and regenerate it") from None
        frame = table.to_pandas()
        missing = [c for c in BASE_COLUMNS if c not in frame.columns]
        if missing:
            raise UserError(f"{path}: manifest lacks columns {missing}; regenerate it")
        vocab = {str(k): [str(v) for v in vals] for k, vals in raw_vocab.items()}
        notes = {str(k): int(v) for k, v in meta.get("notes", {}).items()}
        return cls(dataset=str(dataset), root=str(root), frame=frame, vocab=vocab, notes=notes)


def vid_sort_key(vid: str) -> tuple[int, int | str]:
    """Numeric order for numeric ids (VehicleID's un-padded ``"10"`` after ``"9"``), text order otherwise."""
    return (0, int(vid)) if vid.isdigit() else (1, vid)


def build_manifest(
    dataset: str,
    root: str | os.PathLike[str],
    records: Iterable[Sequence[Any]],
    vocab: Mapping[str, Sequence[str]],
    notes: Mapping[str, int] | None = None,
) -> Manifest:
    """Assemble a manifest from ``(path, vid, camid, split, test_set, *attr_ids)`` records.

    ``attr_ids`` follow the order of ``vocab`` (-1 = missing). Labels are assigned here: contiguous
    0..n-1 over the train rows' vids in :func:`vid_sort_key` order, -1 for every other row.
    ``notes``: the reader's counts (zero counts are left out).

    Example:
        >>> m = build_manifest("synthetic", "/data", [("a.jpg", "7", 0, "train", "", 3)], {"color": ["x"] * 4})
        >>> int(m.frame.loc[0, "label"])
        0
    """
    names = list(vocab)
    columns = ["path", "vid", "camid", "split", "test_set"] + [ATTR_PREFIX + n for n in names]
    frame = pd.DataFrame.from_records(list(records), columns=columns)
    for column in ["path", "vid", "split", "test_set"]:
        frame[column] = frame[column].astype(str)
    for column in ["camid"] + [ATTR_PREFIX + n for n in names]:
        frame[column] = frame[column].astype("int64")
    train_vids = sorted(set(frame.loc[frame["split"] == "train", "vid"]), key=vid_sort_key)
    label_of = {vid: i for i, vid in enumerate(train_vids)}
    labels = [label_of[v] if s == "train" else -1 for v, s in zip(frame["vid"], frame["split"], strict=True)]
    frame.insert(2, "label", np.asarray(labels, dtype=np.int64))
    return Manifest(dataset=dataset, root=str(Path(root).resolve()), frame=frame,
                    vocab={n: list(vocab[n]) for n in names},
                    notes={k: int(v) for k, v in (notes or {}).items() if v})
