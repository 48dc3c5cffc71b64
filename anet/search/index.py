"""A gallery index: the champion's embeddings in faiss, plus a table of what each item is.

One folder per index::

    index.json       format, the model version that embedded it (name, version, run id), feature,
                     dimension, kind (flat | hnsw), source (a prepared test set or a folder), vocabularies
    index.faiss      exact inner product (``IndexFlatIP``; cosine, the vectors are L2-normalised) or,
                     with ``ann``, an HNSW graph (``IndexHNSWFlat``) for large galleries
    gallery.parquet  one row per item, in faiss id order: item, path, camera, time, vid, cache_index,
                     and per attribute the predicted class ``<name>`` and ``<name>_confidence``
    knn.npz          with ``--knn K`` only: each item's K nearest items (search --rerank, anet.search.rerank)

The gallery is either a prepared dataset's gallery rows (read from its cache: the same pixels the
evaluator embeds) or a folder of images with optional camera / time metadata in a CSV
(``path,camera,time``; path relative to the folder). Unreadable files are skipped and counted.

Example:
    >>> predictor, ref = load_predictor("models:/anet-synthetic@champion")
    >>> index = index_split(predictor, ref, PreparedDataset.open(cache_dir), "test", "runs/index")
    >>> GalleryIndex.open("runs/index").model
    ModelRef(name='anet-synthetic', version='3', run_id='9c1e...')
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anet.data.cache import PreparedDataset
from anet.data.images import FORMATS_BY_SUFFIX
from anet.errors import UserError
from anet.io import atomic_write_text
from anet.search.predictor import Predictions, ReidPredictor
from anet.search.rerank import write_graph
from anet.search.served import ModelRef

FORMAT = 1
META, FAISS, TABLE = "index.json", "index.faiss", "gallery.parquet"
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 256  # efSearch 256: bench/search_bench.py
CHUNK = 256  # images decoded and embedded at once (bounded memory for any gallery size)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryIndex:
    """An opened index folder (see the module docstring)."""

    folder: Path
    meta: dict[str, Any]
    table: pd.DataFrame
    faiss_index: Any  # faiss.Index

    @classmethod
    def open(cls, folder: str | Path) -> GalleryIndex:
        """Open an index folder written by :func:`write_index`; a one-line UserError when it is not one."""
        import faiss  # lazy: faiss loads OpenMP and BLAS; only index users pay for it

        folder = Path(folder)
        if not all((folder / name).is_file() for name in (META, FAISS, TABLE)):
            raise UserError(f"{folder}: not an anet index (needs {META}, {FAISS}, {TABLE}); build one with `anet index`")
        meta = json.loads((folder / META).read_text())
        if meta.get("format") != FORMAT:
            raise UserError(f"{folder}: index format {meta.get('format')} (this anet reads {FORMAT}); rebuild it")
        return cls(folder, meta, pd.read_parquet(folder / TABLE), faiss.read_index(str(folder / FAISS)))

    @property
    def model(self) -> ModelRef:
        """The model version whose embeddings the index holds."""
        return ModelRef(**self.meta["model"])

    @property
    def vocab(self) -> dict[str, list[str]]:
        """Class names per attribute of that model."""
        return self.meta["vocab"]

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def embeddings(self) -> np.ndarray:
        """All stored vectors, float32 N x D, in item order."""
        return self.faiss_index.reconstruct_n(0, len(self))

    def check_model(self, ref: ModelRef) -> None:
        """Refuse a query embedded by another model version than the one that built the index."""
        if ref != self.model:
            raise UserError(f"the query was embedded by {ref} but {self.folder} was built by {self.model}; "
                            f"query with --model {self.model.uri} or rebuild the index with that model")


def build_faiss(embeddings: np.ndarray, ann: bool) -> Any:
    """Exact ``IndexFlatIP`` or (``ann``) ``IndexHNSWFlat`` with inner-product metric over ``embeddings``."""
    import faiss  # lazy: see GalleryIndex.open

    dim = embeddings.shape[1]
    if ann:
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def write_index(out: str | Path, predictions: Predictions, table: pd.DataFrame, ref: ModelRef,
                predictor: ReidPredictor, source: dict[str, Any], ann: bool, knn: int = 0) -> GalleryIndex:
    """Write an index folder from the gallery's predictions and its table (rows in the same order);
    ``knn`` > 0 also stores the gallery's exact K-nearest-neighbour graph (for ``search --rerank``)."""
    import faiss  # lazy: see GalleryIndex.open

    if len(table) == 0:
        raise UserError(f"{source}: no gallery images to index")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table.reset_index(drop=True).assign(item=np.arange(len(table), dtype=np.int64))
    for name, probs in predictions.probs.items():
        best = probs.argmax(axis=1)
        table[name] = np.asarray(predictor.vocab[name], dtype=object)[best]
        table[f"{name}_confidence"] = probs[np.arange(len(best)), best].astype(np.float64)
    index = build_faiss(predictions.embeddings, ann)
    faiss.write_index(index, str(out / FAISS))
    if knn:
        write_graph(out, predictions.embeddings, knn)
    table.to_parquet(out / TABLE, index=False)
    meta = {"format": FORMAT, "model": asdict(ref), "feature": predictor.feature,
            "dim": int(predictions.embeddings.shape[1]), "count": len(table), "kind": "hnsw" if ann else "flat",
            "hnsw": {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH} if ann else None,
            "image_size": list(predictor.image_size), "source": source, "vocab": predictor.vocab, "knn": knn}
    atomic_write_text(out / META, json.dumps(meta, indent=2))
    log.info("indexed %d images into %s (%s, model %s)", len(table), out, meta["kind"], ref)
    return GalleryIndex(out, meta, table, index)


def gallery_rows(prepared: PreparedDataset, test_set: str) -> pd.DataFrame:
    """The rows a test set's queries are ranked against: its gallery split (VehicleID: its test rows)."""
    frame = prepared.manifest.frame
    in_set = frame["test_set"] == test_set
    split = "gallery" if (in_set & (frame["split"] == "gallery")).any() else "test"
    rows = frame[in_set & (frame["split"] == split)]
    if rows.empty:
        known = sorted(set(frame.loc[frame["split"] != "train", "test_set"]))
        raise UserError(f"--split {test_set!r}: no gallery rows in {prepared.cache_dir} (test sets: {', '.join(known)})")
    return rows.reset_index(drop=True)


def index_split(predictor: ReidPredictor, ref: ModelRef, prepared: PreparedDataset, test_set: str,
                out: str | Path, ann: bool = False, knn: int = 0) -> GalleryIndex:
    """Index a prepared test set's gallery rows, embedded from the cache (the evaluator's pixels)."""
    if prepared.image_size != predictor.image_size:
        raise UserError(f"{prepared.cache_dir}: cached at {prepared.image_size}, the model takes "
                        f"{predictor.image_size}; use the cache prepared for this model's config")
    rows = gallery_rows(prepared, test_set)
    index = rows["cache_index"].to_numpy(np.int64)
    predictions = _concat([predictor.embed_arrays(prepared.images[index[s:s + CHUNK]])
                           for s in range(0, len(index), CHUNK)])
    root = Path(prepared.manifest.root)
    table = pd.DataFrame({"path": [str(root / p) for p in rows["path"]],
                          "camera": [str(c) if c >= 0 else "" for c in rows["camid"].to_numpy(np.int64)],
                          "time": "", "vid": rows["vid"].astype(str), "cache_index": index})
    source = {"kind": "split", "cache_dir": str(Path(prepared.cache_dir).resolve()), "test_set": test_set,
              "dataset": prepared.manifest.dataset}
    return write_index(out, predictions, table, ref, predictor, source, ann, knn)


def index_folder(predictor: ReidPredictor, ref: ModelRef, folder: str | Path, out: str | Path,
                 meta_csv: str | Path | None = None, ann: bool = False, knn: int = 0) -> GalleryIndex:
    """Index every image under ``folder`` (recursively), with camera / time from ``meta_csv`` when given."""
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise UserError(f"--folder {folder}: no such directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in FORMATS_BY_SUFFIX and p.is_file())
    meta = read_meta(meta_csv, folder)
    kept, parts = [], []
    for start in range(0, len(files), CHUNK):
        arrays = _decode_all(predictor.to_array, files[start:start + CHUNK])
        ok = [i for i, a in enumerate(arrays) if a is not None]
        kept += [files[start + i] for i in ok]
        if ok:
            parts.append(predictor.embed_arrays(np.stack([arrays[i] for i in ok])))
    if len(kept) < len(files):
        log.warning("%d of %d files under %s are not usable images; skipped", len(files) - len(kept), len(files), folder)
    rel = [str(p.relative_to(folder)) for p in kept]
    table = pd.DataFrame({"path": [str(p) for p in kept], "camera": [meta.get(r, ("", ""))[0] for r in rel],
                          "time": [meta.get(r, ("", ""))[1] for r in rel], "vid": "", "cache_index": -1})
    source = {"kind": "folder", "folder": str(folder), "meta": str(meta_csv or ""), "skipped": len(files) - len(kept)}
    if not kept:
        raise UserError(f"--folder {folder}: no usable images ({', '.join(sorted(FORMATS_BY_SUFFIX))})")
    return write_index(out, _concat(parts), table, ref, predictor, source, ann, knn)


def read_meta(meta_csv: str | Path | None, folder: Path) -> dict[str, tuple[str, str]]:
    """``{path relative to folder: (camera, time)}`` from a CSV with columns path[,camera][,time]."""
    if meta_csv is None:
        return {}
    path = Path(meta_csv)
    if not path.is_file():
        raise UserError(f"--meta {path}: no such file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        raise UserError(f"--meta {path}: needs a 'path' column (and optional 'camera', 'time'); got {list(frame.columns)}")
    cams = frame["camera"] if "camera" in frame.columns else pd.Series("", index=frame.index)
    times = frame["time"] if "time" in frame.columns else pd.Series("", index=frame.index)
    unknown = [p for p in frame["path"] if not (folder / p).is_file()]
    if unknown:
        raise UserError(f"--meta {path}: {len(unknown)} paths are not files under {folder} (first: {unknown[0]})")
    return {str(Path(p)): (c.strip(), t.strip()) for p, c, t in zip(frame["path"], cams, times, strict=True)}


def _decode_all(to_array: Callable[[Any, str], np.ndarray], files: list[Path]) -> list[np.ndarray | None]:
    def one(path: Path) -> np.ndarray | None:
        try:
            return to_array(path.read_bytes(), str(path))
        except (UserError, OSError) as exc:
            log.debug("skipped %s: %s", path, exc)
            return None

    with ThreadPoolExecutor(2) as pool:  # Pillow releases the GIL while decoding
        return list(pool.map(one, files))


def _concat(parts: list[Predictions]) -> Predictions:
    names = parts[0].probs if parts else {}
    return Predictions(np.concatenate([p.embeddings for p in parts]) if parts else np.zeros((0, 0), np.float32),
                       {n: np.concatenate([p.probs[n] for p in parts]) for n in names})

