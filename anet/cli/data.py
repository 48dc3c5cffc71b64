"""``anet data ...``: inspect a dataset root, generate synthetic data, import a dataset.

Examples::

    anet data inspect veri776 data/veri776 --manifest runs/veri776.parquet
    anet data synth --out data/synthetic train_ids=40 seed=1
    anet data regenerate                       # a fresh clone: data/synthetic from its seed, checked by DVC
    anet data synth --layout vehicleid --out /tmp/fake_vehicleid --profile smoke
    anet data import veriwild ~/Downloads/VERI-Wild.zip --data-dir data --no-push
    anet data import veri776 s3://datasets/VeRi.zip --overwrite
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anet.config import load_config
from anet.data.manifest import Manifest
from anet.data.readers import read_dataset
from anet.errors import UserError
from anet.mlops.storage.dvc import default_remote, dvc, dvc_root, verified_data_hash
from anet.mlops.storage.importer import import_dataset
from anet.steps.preflight import check_writable
from anet.synthetic.generator import generate_synthetic, render_dataset
from anet.synthetic.layouts import write_layout

DATASETS = ("veri776", "veriwild", "vehicleid")
LAYOUTS = ("own", *DATASETS)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group (inspect, synth, import) to the top-level sub-parsers."""
    data = sub.add_parser("data", help="inspect, generate or import datasets",
                          description="Inspect a dataset root, generate synthetic data, import a dataset.")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    inspect = actions.add_parser("inspect", help="parse a dataset root and print its splits",
                                 description="Parse a dataset root (every quirk checked) and print, per split "
                                 "and test set: images, ids, cameras and attribute coverage.")
    inspect.add_argument("dataset", choices=DATASETS)
    inspect.add_argument("root", type=Path, help="the dataset folder (e.g. data/veri776)")
    inspect.add_argument("--manifest", type=Path, help="also write the manifest parquet here")
    inspect.set_defaults(func=inspect_command)

    synth = actions.add_parser("synth", help="generate the synthetic dataset (own layout or a fake real one)",
                               description="Render the synthetic vehicles. --layout own writes the pipeline's "
                               "own layout; veri776/veriwild/vehicleid write a fake copy of that real "
                               "layout (with its quirks) that `anet data inspect` can read.")
    synth.add_argument("--profile", default="synthetic", help="config profile for data.synthetic")
    synth.add_argument("--layout", choices=LAYOUTS, default="own")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("overrides", nargs="*", metavar="key=value",
                       help="overrides of data.synthetic, e.g. train_ids=20 seed=3")
    synth.set_defaults(func=synth_command)

    regen = actions.add_parser("regenerate", help="regenerate the DVC-tracked synthetic data and check its hash",
                               description="Render the synthetic dataset a profile uses from its seed into "
                               "data.root, check its hash against the one data.dvc tracks, add it to "
                               "the DVC cache and push it when a default remote is configured.")
    regen.add_argument("--profile", default="synthetic", help="config profile (default: synthetic)")
    regen.set_defaults(func=regenerate_command)

    imp = actions.add_parser("import", help="import a downloaded dataset into the data dir (and DVC)",
                             description="Check, copy and version a downloaded dataset.")
    imp.add_argument("dataset", choices=DATASETS)
    imp.add_argument("source", help="the downloaded folder or archive, local or s3://bucket/key")
    imp.add_argument("--data-dir", type=Path, default=Path("data"), help="datasets root (default: data)")
    imp.add_argument("--no-push", action="store_true", help="do not push to the DVC remote")
    imp.add_argument("--overwrite", action="store_true", help="replace an already imported copy")
    imp.set_defaults(func=import_command)


def regenerate_command(args: argparse.Namespace) -> int:
    """``anet data regenerate [--profile synthetic]``: what a fresh clone runs instead of ``dvc pull``."""
    cfg = load_config(args.profile)
    root = Path(cfg.data.root)
    if cfg.data.dataset != "synthetic":
        raise UserError(f"--profile {args.profile}: {cfg.data.dataset} is not generated; use `dvc pull` or "
                        f"`anet data import {cfg.data.dataset} ...`")
    repo = dvc_root(root.parent if root.parent.exists() else Path.cwd(), or_cwd=True)
    if repo is None:
        raise UserError(f"{root}: not inside a DVC repository; run this in the project checkout")
    generate_synthetic(cfg.data.synthetic, root)
    tracked = verified_data_hash(root)
    if tracked is None:
        raise UserError(f"{root}: regenerated, but {repo}/data.dvc does not track exactly this (another dataset "
                        "under data/, or a renderer that changed): `dvc data status` shows the difference; "
                        "`dvc add data` records the new state")
    dvc(repo, "commit", "--force", "data.dvc")  # the verified files into the DVC cache
    pushed = bool(default_remote(repo)) and bool(dvc(repo, "push", "data.dvc") or True)
    print(f"{root}: matches data.dvc ({tracked}); in the DVC cache" + ("; pushed to the default remote" if pushed
                                                                        else ""))
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    """``anet data inspect DATASET ROOT [--manifest OUT]``."""

    manifest = read_dataset(args.dataset, args.root)
    print(format_summary(manifest))
    if args.manifest is not None:
        manifest.save(args.manifest)
        print(f"manifest written to {args.manifest}")
    return 0


def synth_command(args: argparse.Namespace) -> int:
    """``anet data synth [--profile P] [--layout L] --out DIR [key=value ...]``."""

    overrides = [o if o.startswith("data.synthetic.") else f"data.synthetic.{o}" for o in args.overrides]
    cfg = load_config(args.profile, overrides).data.synthetic
    out: Path = args.out
    check_writable(out, "--out")  # else a PermissionError traceback after rendering
    if args.layout == "own":  # rendered into a sibling folder, then renamed onto --out
        check_writable(out.resolve().parent, f"--out {out} (generated next to it, then renamed)")
    if args.layout == "own":

        manifest = generate_synthetic(cfg, out)
    else:

        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out}: already exists and is not an empty folder; choose a new --out")
        write_layout(args.layout, render_dataset(cfg), out)
        manifest = read_dataset(args.layout, out)
        print(f"fake {args.layout} layout written to {out}; read it with `anet data inspect {args.layout} {out}`")
    print(format_summary(manifest))
    return 0


def import_command(args: argparse.Namespace) -> int:
    """``anet data import DATASET SOURCE [--data-dir DIR] [--no-push] [--overwrite]``."""

    check_writable(args.data_dir, "--data-dir")
    kwargs = {"overwrite": True} if args.overwrite else {}
    result = import_dataset(args.dataset, str(args.source), data_dir=Path(args.data_dir),
                            push=not args.no_push, **kwargs)
    if isinstance(result, dict):
        print("\n".join(f"{key}: {value}" for key, value in result.items()))
    elif result is not None:
        print(result)
    return 0


def format_summary(manifest: Manifest) -> str:
    """A readable table: one row per split / test set with images, ids, cameras, attribute coverage."""
    table = manifest.summary()
    attrs = list(manifest.vocab)
    header = ["split", "test set", "images", "ids", "cameras"] + attrs
    rows = [header]
    for rec in table.itertuples(index=False):
        cams = str(rec.cameras) if rec.cameras else "-"
        cov = [f"{getattr(rec, f'cov_{a}'):.1%}" for a in attrs]
        rows.append([rec.split, rec.test_set or "-", str(rec.images), str(rec.ids), cams, *cov])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [_format_row(row, widths) for row in rows]
    classes = ", ".join(f"{name} ({n} classes)" for name, n in manifest.attr_classes().items())
    title = (f"{manifest.dataset} at {manifest.root}: {manifest.num_train_ids()} train ids; "
             f"attributes {classes or 'none'}; coverage = labelled fraction")
    return "\n".join([title, *lines])


def _format_row(row: list[str], widths: list[int]) -> str:
    """Text columns (split, test set) left-aligned, numbers right-aligned."""
    cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
    return "  ".join(cells).rstrip()
