"""Prepared dataset cache: every image checked once, resized once, read later without JPEG decoding.

``prepare_dataset`` turns a :class:`~anet.data.manifest.Manifest` into a directory::

    <cache_root>/<dataset>-<h>x<w>-<fingerprint[:16]>/
        images.npy        uint8 N x H x W x 3 (one row per UNIQUE image path; opened as a memmap)
        manifest.parquet  the manifest without quarantined rows, plus column ``cache_index``
        quarantine.csv    path, reason (every image that was excluded; the limit is checked on every call)
        meta.json         fingerprint, image size, counts
        COMPLETE          written last; a directory without it is never used

The fingerprint is sha256 over the manifest content, the sha256 of every image file, the
target size and the image policy (``min_image_size``, which decides which images are kept). Each
file is read once: hashed and decoded from the same bytes. So that a rerun does not have to read
every file again, ``<cache_root>/.memo/<key>`` maps a quick key (manifest hash +
size, mtime and inode of every file, as git's index does) to the cache directory: a rerun on
unchanged files returns the cache after one ``stat`` per file, without reading or decoding. When
the quick key misses but the content is the same (files touched or copied), the images are
decoded once more and the existing directory is kept. The directory is built under a temporary
name and renamed into place after the ``COMPLETE`` marker is written, so a killed prepare never
leaves a cache that looks valid.

Pods sharing one volume: temp folders follow :mod:`anet.io`'s rule (host, PID namespace, pid), publication
checks every file, and a cache found incomplete is never loaded: prepare rebuilds it, ``open`` refuses it.

Rows of quarantined images stay zero in ``images.npy``; no manifest row points at them.

A cache may be shared by a team: every file of a published cache and of ``.memo`` is made
group-readable and -writable (0o664, folders 0o2775) whatever the writer's umask, so another member of
the folder's group reuses it (``chgrp team <cache_root> && chmod 2775 <cache_root>`` once: the setgid
bit gives every new entry that group).

The image policy (what is converted, what is quarantined and why) is :mod:`anet.data.images`'s.

Example:
    >>> prepared = prepare_dataset(manifest, Path(".cache/anet"), (128, 128), 0.01, min_image_size=16)
    >>> prepared = PreparedDataset.open(prepared.cache_dir)     # what later steps do
    >>> prepared.images[prepared.train_rows()["cache_index"].to_numpy()[:4]].shape
    (4, 128, 128, 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anet.data.images import decode_resize
from anet.data.manifest import Manifest
from anet.errors import UserError
from anet.io import STALE_AFTER_S, atomic_write_text, remove_stale_temps, temp_prefix

log = logging.getLogger(__name__)
COMPLETE = "COMPLETE"
SHARED_FILE, SHARED_DIR = 0o664, 0o2775  # group-readable/-writable, umask-independent; setgid keeps the group
WORKERS = 2  # Pillow releases the GIL in decode and resize, so threads use both cores
_FORMAT = 2  # of the cache content; 2: the image policy of anet.data.images (1 quarantined every non-RGB image)


@dataclass(frozen=True)
class PreparedDataset:
    """A complete prepared cache directory, opened read-only."""

    cache_dir: Path
    fingerprint: str
    manifest: Manifest  # quarantined rows removed; column cache_index = row in ``images``
    images: np.ndarray  # uint8 N x H x W x 3, memmap
    quarantine: pd.DataFrame  # columns path, reason

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str]) -> PreparedDataset:
        """Open a cache directory written by :func:`prepare_dataset`; refuses incomplete ones."""
        cache_dir = Path(cache_dir)
        if not (cache_dir / COMPLETE).is_file():
            raise UserError(
                f"{cache_dir}: not a complete prepared cache (no {COMPLETE} marker: missing, or a prepare "
                "was interrupted); run the prepare step again"
            )
        if problem := incomplete(cache_dir):
            raise UserError(f"{cache_dir}: an incomplete prepared cache ({problem}); never loaded: delete it "
                            "and run the prepare step again (or rerun it: prepare rebuilds such a cache)")
        meta = json.loads((cache_dir / "meta.json").read_text())
        images = np.load(cache_dir / "images.npy", mmap_mode="r")
        quarantine = pd.read_csv(cache_dir / "quarantine.csv", dtype=str, keep_default_na=False)
        manifest = Manifest.load(cache_dir / "manifest.parquet")
        return cls(cache_dir, meta["fingerprint"], manifest, images, quarantine)

    @property
    def image_size(self) -> tuple[int, int]:
        """(h, w) of the cached images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def attributes(self) -> tuple[str, ...]:
        """Attribute names of the dataset (vocabulary keys), e.g. ("color", "type")."""
        return tuple(self.manifest.vocab)

    def train_rows(self) -> pd.DataFrame:
        """Rows of the train split, index reset (positions used by the PK sampler)."""
        return self.rows("train")

    def rows(self, split: str, test_set: str | None = None) -> pd.DataFrame:
        """Rows of one split (and one test set when given), in manifest order, index reset."""
        frame = self.manifest.frame
        mask = frame["split"] == split
        if test_set is not None:
            mask &= frame["test_set"] == test_set
        return frame[mask].reset_index(drop=True)


def prepare_dataset(
    manifest: Manifest,
    cache_root: str | os.PathLike[str],
    image_size: tuple[int, int],
    quarantine_max_fraction: float = 0.01,
    progress: bool = True,
    min_image_size: int = 16,
) -> PreparedDataset:
    """Check, resize and cache every image of ``manifest``; reuse the cache when nothing changed.

    Bad images (see the image policy in :mod:`anet.data.images`: missing, unreadable, too small, content
    not the format the name says, ...) are excluded and listed in ``quarantine.csv``; more than
    ``quarantine_max_fraction`` of the unique images quarantined raises a UserError naming the report.
    ``min_image_size`` (``data.min_image_size``): the shortest side, in pixels, an image must have.
    Example in the module docstring.
    """
    h, w = int(image_size[0]), int(image_size[1])
    cache_root = Path(cache_root)
    paths = sorted(set(manifest.frame["path"]))
    if not paths:
        raise UserError(f"{manifest.dataset} manifest (root {manifest.root}) lists no images; nothing to prepare")
    manifest_hash = _manifest_hash(manifest, (h, w), int(min_image_size))
    memo = cache_root / ".memo" / _stat_key(manifest_hash, Path(manifest.root), paths)
    final = _lookup(memo, cache_root)
    if final is None:
        final = _build_and_publish(manifest, paths, manifest_hash, (h, w), int(min_image_size), cache_root,
                                   progress)
        atomic_write_text(memo, final.name + "\n")
        share_with_group(memo.parent)
    prepared = PreparedDataset.open(final)
    # Published even when too many images are bad: the content is right and the limit is a policy
    # checked on every call, so a rerun with a higher limit reuses the cache without decoding.
    _check_quarantine(prepared.quarantine, len(paths), quarantine_max_fraction, final / "quarantine.csv")
    return prepared


def _build_and_publish(manifest: Manifest, paths: list[str], manifest_hash: str, size: tuple[int, int],
                       min_side: int, cache_root: Path, progress: bool) -> Path:
    """Read, hash and decode every image once into a temp dir; rename it to its fingerprint name."""
    prefix = f"{manifest.dataset}-{size[0]}x{size[1]}"
    _remove_dead_temps(cache_root, prefix)
    tmp = cache_root / f"{temp_prefix(prefix)}{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        digests = _build(manifest, paths, size, min_side, tmp, progress)
        fingerprint = hashlib.sha256((manifest_hash + "\n" + "\n".join(digests)).encode()).hexdigest()
        final = cache_root / f"{prefix}-{fingerprint[:16]}"
        if incomplete(final):  # else: same content under new mtimes, keep the existing one
            if problem := incomplete(tmp, marker=False):
                raise UserError(f"{tmp}: the cache this prepare was building lost files while it ran ({problem}; "
                                "another process removed it?); nothing was published: run the prepare step again")
            meta = json.loads((tmp / "meta.json").read_text()) | {"fingerprint": fingerprint}
            atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
            atomic_write_text(tmp / COMPLETE, fingerprint + "\n")
            share_with_group(tmp)
            _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _manifest_hash(manifest: Manifest, size: tuple[int, int], min_side: int) -> str:
    """sha256 over the manifest content (root included: the cached manifest records it), the size and
    the image policy (``min_side`` decides which images are kept)."""
    frame = manifest.frame[sorted(manifest.frame.columns)]
    digest = hashlib.sha256()
    digest.update(json.dumps({"dataset": manifest.dataset, "root": manifest.root, "vocab": manifest.vocab,
                              "size": list(size), "min_side": min_side, "format": _FORMAT},
                             sort_keys=True).encode())
    digest.update(frame.to_csv(index=False).encode())
    return digest.hexdigest()


def _stat_key(manifest_hash: str, root: Path, paths: list[str]) -> str:
    """Key of the quick check: manifest hash + (size, mtime, inode) of every file, like git's index."""
    digest = hashlib.sha256(manifest_hash.encode())
    for rel in paths:
        try:
            st = os.stat(root / rel)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        except OSError:
            digest.update(f"{rel}\0missing\n".encode())
    return digest.hexdigest()[:32]


def _lookup(memo: Path, cache_root: Path) -> Path | None:
    """The complete cache the memo points at, or None (no memo, or its cache is gone/incomplete)."""
    try:
        final = cache_root / memo.read_text().strip()
    except OSError:
        return None
    return None if incomplete(final) else final


def _build(manifest: Manifest, paths: list[str], size: tuple[int, int], min_side: int, tmp: Path,
           progress: bool) -> list[str]:
    """Read each file once: hash it and decode + resize the same bytes into ``tmp``. Returns the hashes."""
    h, w = size
    root = Path(manifest.root)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(paths), h, w, 3))  # N x H x W x 3

    def one(index: int) -> tuple[str, str]:
        try:
            data = (root / paths[index]).read_bytes()
        except FileNotFoundError:
            return "missing", "missing"  # listed but absent: quarantined like a corrupt file
        except OSError as exc:
            return "unreadable", f"unreadable: {exc.strerror or exc}"
        pixels, reason = decode_resize(data, size, min_side=min_side, name=paths[index])
        if pixels is not None:
            images[index] = pixels
        return hashlib.sha256(data).hexdigest(), reason

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(_progress(pool.map(one, range(len(paths))), len(paths),
                                 f"prepare {manifest.dataset} {h}x{w}", progress))
    images.flush()
    bad = {p: reason for p, (_, reason) in zip(paths, results, strict=True) if reason}
    quarantine = pd.DataFrame({"path": list(bad), "reason": list(bad.values())}, columns=["path", "reason"])
    atomic_write_text(tmp / "quarantine.csv", quarantine.to_csv(index=False))
    index_of = {p: i for i, p in enumerate(paths)}
    frame = manifest.frame[~manifest.frame["path"].isin(bad)].reset_index(drop=True)
    frame["cache_index"] = frame["path"].map(index_of).astype("int64")
    dataclasses.replace(manifest, frame=frame).save(tmp / "manifest.parquet")
    meta = {"dataset": manifest.dataset, "image_size": [h, w], "min_image_size": min_side,
            "num_images": len(paths), "num_quarantined": len(bad), "num_rows": len(frame),
            "quarantine_reasons": _reason_counts(quarantine)}
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2))
    return [digest for digest, _ in results]


def _reason_counts(quarantine: pd.DataFrame) -> dict[str, int]:
    """``{"missing": 2, "too small": 1, "unreadable": 1}``: reasons up to their first ':'."""
    kinds = quarantine["reason"].astype(str).str.split(":").str[0]
    return {str(k): int(n) for k, n in kinds.value_counts().sort_index().items()}


def _check_quarantine(quarantine: pd.DataFrame, total: int, limit: float, report: Path) -> None:
    bad = len(quarantine)
    if total and bad / total > limit:
        reasons = ", ".join(f"{kind} {n}" for kind, n in _reason_counts(quarantine).items())
        raise UserError(
            f"{bad} of {total} images ({bad / total:.2%}) are missing, unreadable or invalid ({reasons}), above "
            f"the limit data.quarantine_max_fraction={limit}; see {report} (fix the files or raise the limit)"
        )


def incomplete(cache_dir: Path, marker: bool = True) -> str:
    """What a cache folder lacks (``""``: nothing): a file, or ``images.npy`` rows of the size meta.json
    says. ``marker=False``: a build about to be published (its ``COMPLETE`` is not written yet)."""
    wanted = ([COMPLETE] if marker else []) + ["meta.json", "manifest.parquet", "quarantine.csv", "images.npy"]
    if missing := [name for name in wanted if not (cache_dir / name).is_file()]:
        return f"no {', '.join(missing)}"
    try:
        meta = json.loads((cache_dir / "meta.json").read_text())
        shape = np.load(cache_dir / "images.npy", mmap_mode="r").shape  # reads the header, checks the length
        expected = (int(meta["num_images"]), *map(int, meta["image_size"]), 3)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return "" if shape == expected else f"images.npy is {shape}, meta.json says {expected}"


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` onto ``final``; if a concurrent prepare won, keep theirs. An incomplete
    ``final`` (a prepare from before publication was checked, a file deleted by hand) is replaced."""
    if final.exists() and incomplete(final):
        log.warning("%s: incomplete prepared cache (%s); replaced by a fresh build", final, incomplete(final))
        junk = final.with_name(f"{temp_prefix(final.name)}{uuid.uuid4().hex[:8]}.old")
        with contextlib.suppress(FileNotFoundError):  # another prepare may be replacing it too
            os.rename(final, junk)
        shutil.rmtree(junk, ignore_errors=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if incomplete(final):
            raise


def share_with_group(folder: Path) -> None:
    """``folder`` and what is in it: files 0o664, folders 0o2775 (those this user owns; others are left)."""
    uid = os.geteuid()
    for path in [folder, *folder.rglob("*")]:
        st = path.lstat()
        if st.st_uid == uid and not path.is_symlink():
            path.chmod(SHARED_DIR if path.is_dir() else SHARED_FILE)


def _remove_dead_temps(cache_root: Path, prefix: str) -> None:
    """Drop temp dirs left by killed prepare processes (:func:`anet.io.remove_stale_temps`: host, PID
    namespace and pid in the name), and those of older versions (``.tmp-<prefix>-<pid>-*``, no host) only
    once untouched for :data:`~anet.io.STALE_AFTER_S`: their pid may belong to another pod."""
    remove_stale_temps(cache_root, name=prefix)
    for tmp in cache_root.glob(f".tmp-{prefix}-*"):
        with contextlib.suppress(OSError):
            if time.time() - tmp.stat().st_mtime > STALE_AFTER_S:
                shutil.rmtree(tmp, ignore_errors=True)


def _progress(items: Iterator, total: int, desc: str, enabled: bool) -> Iterator:
    if not enabled:
        return items
    from tqdm import tqdm

    return iter(tqdm(items, total=total, desc=desc, unit="img"))

