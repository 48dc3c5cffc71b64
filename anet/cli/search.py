"""``anet index``, ``anet search``, ``anet search-study`` and ``anet serve``: use the champion.

Examples::

    anet index --model models:/anet-synthetic@champion --split test --out runs/index
    anet index --model models:/anet-veri776@champion --folder ~/clips --meta ~/clips/meta.csv --out runs/clips --ann
    anet search car.jpg --index runs/index --k 20 --color red --type suv --min-confidence 0.5
    anet search car.jpg --index runs/index --camera 3 --camera 4 --json
    anet search-study --index runs/index
    anet index --model models:/anet-synthetic@champion --split test --out runs/index --knn 21
    anet search car.jpg --index runs/index --rerank; anet search-study --index runs/index --rerank
    anet serve --index runs/index --port 8000

The registry comes from --tracking-uri or $MLFLOW_TRACKING_URI (default: the local
sqlite:///<cwd>/mlflow.db). A query is embedded by the model version that built the index; naming
another with --model is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from anet.data.cache import PreparedDataset
from anet.errors import UserError
from anet.logs import setup_logging
from anet.mlops.tracking.tracking import check_tracking_server, configure
from anet.search.index import GalleryIndex, index_folder, index_split
from anet.search.query import Filters, contact_sheet, embed_query, search
from anet.search.rerank import load_graph
from anet.search.served import load_predictor, prepared_of_model
from anet.search.study import filter_study
from anet.steps.preflight import check_writable

log = logging.getLogger(__name__)
TRACKING_HELP = "default: $MLFLOW_TRACKING_URI or local sqlite"


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``index``, ``search``, ``search-study`` and ``serve`` to the ``anet`` parser."""
    idx = sub.add_parser("index", help="embed a gallery with a registered model into a faiss index",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    idx.add_argument("--model", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    what = idx.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", metavar="TEST_SET", help="a prepared test set's gallery, e.g. test, small, 800")
    what.add_argument("--folder", type=Path, help="every image under this folder")
    idx.add_argument("--meta", type=Path, help="CSV with columns path[,camera][,time] (with --folder)")
    idx.add_argument("--cache", type=Path, help="prepared cache (with --split; default: the model's training run's)")
    idx.add_argument("--out", type=Path, required=True, help="index folder to write")
    idx.add_argument("--ann", action="store_true", help="approximate HNSW index (worth it past ~100k items)")
    idx.add_argument("--knn", type=int, default=0, metavar="K",
                     help="also store the gallery's exact K-nearest-neighbour graph (e.g. 21) for search --rerank")
    idx.add_argument("--tracking-uri", help=TRACKING_HELP)
    idx.set_defaults(func=run_index)

    _add_search(sub)

    study = sub.add_parser("search-study", help="mAP / R1 with and without filtering by the query's attributes")
    study.add_argument("--index", type=Path, required=True, help="an index built with --split")
    study.add_argument("--json", action="store_true")
    study.add_argument("--rerank", action="store_true", help="add a row with search --rerank's mAP / R1 (needs --knn)")
    study.add_argument("--tracking-uri", help=TRACKING_HELP)
    study.set_defaults(func=run_study)

    serve = sub.add_parser("serve", help="the search page over an index (http://127.0.0.1:8000)")
    serve.add_argument("--index", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tracking-uri", help=TRACKING_HELP)
    serve.set_defaults(func=run_serve)


def _add_search(sub: argparse._SubParsersAction) -> None:
    srch = sub.add_parser("search", help="rank an index's gallery for a query image")
    srch.add_argument("image", type=Path, metavar="IMAGE")
    srch.add_argument("--index", type=Path, required=True)
    srch.add_argument("--k", type=int, default=20)
    srch.add_argument("--color", help="keep items predicted this colour")
    srch.add_argument("--type", help="keep items predicted this type")
    srch.add_argument("--where", action="append", default=[], metavar="ATTR=CLASS", help="any attribute (repeatable)")
    srch.add_argument("--camera", action="append", default=[], help="keep these cameras (repeatable, or a,b)")
    srch.add_argument("--min-confidence", type=float, default=0.0, help="of the attribute predictions filtered on")
    srch.add_argument("--json", action="store_true", help="print JSON instead of a table")
    srch.add_argument("--rerank", action="store_true",
                      help="re-rank the top candidates (k-reciprocal, with the graph of an index built with --knn)")
    srch.add_argument("--sheet", type=Path, default=Path("search.png"), help="contact sheet PNG (default: search.png)")
    srch.add_argument("--model", help="must be the index's model (default: it)")
    srch.add_argument("--tracking-uri", help=TRACKING_HELP)
    srch.set_defaults(func=run_search)


def _connect(tracking_uri: str | None) -> None:
    check_tracking_server(configure(tracking_uri))


def run_index(args: argparse.Namespace) -> int:
    """``anet index``: embed the gallery, write the index folder, print its summary."""
    setup_logging()
    if args.meta and not args.folder:
        raise UserError("--meta goes with --folder (a prepared test set has its own cameras)")
    check_writable(args.out, "--out")  # else a PermissionError after embedding the whole gallery
    if args.knn and args.knn < 2:
        raise UserError(f"--knn {args.knn}: must be at least 2 (re-ranking uses 21)")
    _connect(args.tracking_uri)
    predictor, ref = load_predictor(args.model)
    if args.folder:
        index = index_folder(predictor, ref, args.folder, args.out, args.meta, ann=args.ann, knn=args.knn)
    else:
        prepared = PreparedDataset.open(args.cache) if args.cache else prepared_of_model(ref)
        index = index_split(predictor, ref, prepared, args.split, args.out, ann=args.ann, knn=args.knn)
    sys.stdout.write(f"{index.folder}: {len(index)} items, {index.meta['kind']} index, model {ref}\n")
    return 0


def filters_from(args: argparse.Namespace) -> Filters:
    """The attribute / camera filters named on the command line."""
    attrs = {name: value for name, value in (("color", args.color), ("type", args.type)) if value}
    for item in args.where:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UserError(f"--where {item!r}: expected ATTR=CLASS, e.g. --where model=golf")
        attrs[name.strip()] = value.strip()
    cameras = tuple(c.strip() for cam in args.camera for c in cam.split(",") if c.strip())
    return Filters(attrs, cameras, args.min_confidence)


def run_search(args: argparse.Namespace) -> int:
    """``anet search``: embed IMAGE with the index's model, print the ranked hits, write the contact sheet."""
    setup_logging()
    if not args.image.is_file():
        raise UserError(f"{args.image}: no such image")
    index = GalleryIndex.open(args.index)
    filters = filters_from(args)
    filters.mask(index)  # unknown attributes / classes fail before the model is loaded
    if args.rerank:
        load_graph(index.folder)  # an index without a graph fails before the model is loaded
    _connect(args.tracking_uri)
    predictor, ref = load_predictor(args.model or index.model.uri)
    query = embed_query(predictor, ref, args.image.read_bytes())
    hits = search(index, query, args.k, filters, rerank=args.rerank)
    sheet = contact_sheet(index, query, hits, args.sheet)
    if args.json:
        out = {"query": {n: {"class": c, "confidence": p} for n, (c, p) in query.attributes.items()},
               "model": str(ref), "sheet": str(sheet), "hits": hits.to_dict("records")}
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(_table(hits, list(index.vocab)) + "\n")
        log.info("query predicted %s; contact sheet %s",
                 ", ".join(f"{n}={c} ({p:.2f})" for n, (c, p) in query.attributes.items()), sheet)
    return 0


def _table(hits: pd.DataFrame, attrs: list[str]) -> str:
    if hits.empty:
        return "no gallery item passes the filters"
    cols = ["rank", "score", "camera", *attrs, "path"]
    shown = hits[cols].assign(score=hits["score"].map("{:.4f}".format), camera=hits["camera"].replace("", "-"))
    return shown.to_string(index=False)


def run_study(args: argparse.Namespace) -> int:
    """``anet search-study``: the filtering table for an index of a test set."""
    setup_logging()
    index = GalleryIndex.open(args.index)
    if args.rerank:
        load_graph(index.folder)
    _connect(args.tracking_uri)
    predictor, _ = load_predictor(index.model.uri)
    source = index.meta["source"]
    if source.get("kind") != "split":
        raise UserError(f"{args.index}: built from a folder; the study needs an index built with --split")
    table = filter_study(index, predictor, PreparedDataset.open(source["cache_dir"]), rerank=args.rerank)
    text = table.to_json(orient="records", indent=2) if args.json else table.round(4).to_string(index=False)
    sys.stdout.write(text + "\n")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """``anet serve``: the search page (uvicorn, until Ctrl-C)."""
    from anet.search.web import serve_page  # lazy: fastapi / uvicorn only for the page

    setup_logging()
    index = GalleryIndex.open(args.index)
    _connect(args.tracking_uri)
    serve_page(index, host=args.host, port=args.port)
    return 0
