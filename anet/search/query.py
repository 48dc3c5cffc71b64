"""Query an index: embed an image with the index's model, rank the gallery, filter, draw a contact sheet.

Exact search (``IndexFlatIP``) ranks like the evaluator (:mod:`anet.evaluation.ranking`): by the
float32 distance ``1 - q.g``, ties broken by the lower gallery index. Attribute filters use the
model's predictions stored in the index: ``--color red`` keeps items predicted red with at least
``min_confidence``; camera filters keep the listed cameras. Filtering happens inside faiss (an id
selector), so the top k are the best k among the kept items, not a filtered top k.

Example:
    >>> index = GalleryIndex.open("runs/index")
    >>> predictor, ref = load_predictor(index.model.uri)
    >>> query = embed_query(predictor, ref, Path("car.jpg").read_bytes())
    >>> hits = search(index, query, k=20, filters=Filters({"color": "red"}, min_confidence=0.5))
    >>> hits[["rank", "path", "camera", "score", "color", "type"]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from anet.errors import UserError
from anet.search.index import GalleryIndex
from anet.search.predictor import ReidPredictor
from anet.search.rerank import POOL, load_graph, rerank_candidates
from anet.search.served import ModelRef

TILE = 128  # px of a contact-sheet tile
COLUMNS = 5


@dataclass(frozen=True)
class Query:
    """One embedded query image."""

    embedding: np.ndarray  # float32 D, L2-normalised
    model: ModelRef
    attributes: dict[str, tuple[str, float]]  # name -> (predicted class, its probability)
    image: np.ndarray | None = None  # uint8 h x w x 3, for the contact sheet


@dataclass(frozen=True)
class Filters:
    """Which gallery items may be returned; empty means all."""

    attributes: dict[str, str] = field(default_factory=dict)  # name -> class name the prediction must be
    cameras: tuple[str, ...] = ()
    min_confidence: float = 0.0  # of the attribute predictions the filter relies on

    def mask(self, index: GalleryIndex) -> np.ndarray | None:
        """Boolean mask over the index's items, or None when nothing is filtered. Unknown names fail."""
        if not self.attributes and not self.cameras:
            return None
        table, keep = index.table, np.ones(len(index.table), dtype=bool)
        for name, value in self.attributes.items():
            if name not in index.vocab:
                raise UserError(f"attribute {name!r}: the index's model predicts {', '.join(index.vocab) or 'none'}")
            if value not in index.vocab[name]:
                raise UserError(f"--{name} {value!r}: not a class of {name} ({', '.join(index.vocab[name])})")
            keep &= (table[name] == value).to_numpy() & (table[f"{name}_confidence"] >= self.min_confidence).to_numpy()
        if self.cameras:
            keep &= table["camera"].isin(self.cameras).to_numpy()
        return keep


def embed_query(predictor: ReidPredictor, ref: ModelRef, image: Any) -> Query:
    """Embed one image (encoded bytes or a uint8 H x W x 3 array) with the model ``ref`` names."""
    pixels = predictor.to_array(image, "query image")
    out = predictor.embed_arrays(pixels[None])
    attrs = {n: (predictor.vocab[n][int(p[0].argmax())], float(p[0].max())) for n, p in out.probs.items()}
    return Query(out.embeddings[0], ref, attrs, pixels)


def query_from_item(index: GalleryIndex, item: int) -> Query:
    """A gallery item as the next query (its stored embedding and predictions; no model needed)."""
    if not 0 <= item < len(index):
        raise UserError(f"item {item}: the index has items 0..{len(index) - 1}")
    row = index.table.iloc[item]
    attrs = {n: (str(row[n]), float(row[f"{n}_confidence"])) for n in index.vocab}
    return Query(index.faiss_index.reconstruct(int(item)), index.model, attrs, load_image(index, item))


def search(index: GalleryIndex, query: Query, k: int = 20, filters: Filters | None = None,
           rerank: bool = False) -> pd.DataFrame:
    """The top ``k`` gallery items for ``query``: rank, score (cosine similarity) and the item's table row.

    ``rerank``: the top ``anet.search.rerank.POOL`` candidates are re-ordered by k-reciprocal
    re-ranking with the index's stored neighbour graph (``anet index --knn``); a ``rerank_distance``
    column is added.
    """
    import faiss  # lazy: see GalleryIndex.open

    index.check_model(query.model)
    if k < 1:
        raise UserError(f"--k {k}: must be at least 1")
    graph = load_graph(index.folder) if rerank else None
    mask = (filters or Filters()).mask(index)
    allowed = len(index) if mask is None else int(mask.sum())
    top, k = k, min(max(k, POOL) if rerank else k, allowed)
    if k == 0:
        return _hits(index, np.zeros(0, np.int64), np.zeros(0, np.float32))
    selector = None if mask is None else faiss.IDSelectorBatch(np.flatnonzero(mask).astype(np.int64))
    if index.meta["kind"] == "hnsw":
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(k, index.meta["hnsw"]["ef_search"]))
    else:
        params = None if selector is None else faiss.SearchParameters(sel=selector)
    q = np.ascontiguousarray(query.embedding, dtype=np.float32)[None]  # 1 x D
    scores, ids = index.faiss_index.search(q, k, params=params)
    scores, ids = scores[0][ids[0] >= 0], ids[0][ids[0] >= 0]
    order = np.lexsort((ids, np.float32(1) - scores))  # the evaluator's key: D = 1 - S, then the lower index
    if graph is None:
        return _hits(index, ids[order], scores[order])
    by_id = dict(zip(ids.tolist(), scores.tolist(), strict=True))
    ids, dist = rerank_candidates(index.faiss_index.reconstruct_batch, graph, q[0], ids[order], mask)
    hits = _hits(index, ids[:top], np.asarray([by_id[i] for i in ids[:top].tolist()], np.float32))
    return hits.assign(rerank_distance=dist[:top].astype(np.float64))


def _hits(index: GalleryIndex, ids: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    rows = index.table.iloc[ids].reset_index(drop=True)
    rows.insert(0, "score", scores.astype(np.float64))
    rows.insert(0, "rank", np.arange(1, len(ids) + 1))
    return rows


def load_image(index: GalleryIndex, item: int) -> np.ndarray:
    """A gallery item's pixels (uint8 H x W x 3): the original file when it is there, else the cache."""
    row = index.table.iloc[item]
    path = Path(str(row["path"]))
    if path.is_file():
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except OSError:
            pass
    cache_dir = index.meta["source"].get("cache_dir")
    if int(row["cache_index"]) >= 0 and cache_dir and (Path(cache_dir) / "images.npy").is_file():
        return np.asarray(np.load(Path(cache_dir) / "images.npy", mmap_mode="r")[int(row["cache_index"])])
    return np.full((TILE, TILE, 3), 200, np.uint8)  # gone since indexing: a blank tile


def contact_sheet(index: GalleryIndex, query: Query, hits: pd.DataFrame, out: str | Path) -> Path:
    """A PNG grid: the query (with its predicted attributes), then the hits with rank, score and camera."""
    tiles = [_tile(query.image if query.image is not None else np.zeros((TILE, TILE, 3), np.uint8),
                   ["query", _attrs_text(query.attributes)], (40, 90, 200))]
    for hit in hits.to_dict("records"):
        lines = [f"#{hit['rank']}  {hit['score']:.3f}" + (f"  cam {hit['camera']}" if hit["camera"] else ""),
                 " ".join(str(hit[n]) for n in index.vocab)]
        tiles.append(_tile(load_image(index, int(hit["item"])), lines, (255, 255, 255)))
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + 28)), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % COLUMNS) * TILE, (i // COLUMNS) * (TILE + 28)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)
    return out


def _tile(image: np.ndarray, lines: list[str], border: tuple[int, int, int]) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + 28), (255, 255, 255))
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((TILE - 6, TILE - 6), Image.Resampling.BILINEAR)
    if max(picture.size) < TILE - 6:  # small cached images: scale up so they can be seen
        scale = (TILE - 6) / max(picture.size)
        picture = picture.resize((max(1, int(picture.width * scale)), max(1, int(picture.height * scale))))
    draw = ImageDraw.Draw(tile)
    draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=border, width=3)
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    for i, line in enumerate(lines):
        draw.text((3, TILE + 2 + 12 * i), line[:24], fill=(0, 0, 0))
    return tile


def _attrs_text(attributes: dict[str, tuple[str, float]]) -> str:
    return " ".join(value for value, _ in attributes.values())
