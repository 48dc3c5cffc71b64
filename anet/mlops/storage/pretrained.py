"""Resolve ``model.pretrained`` to a verified local weight file, once, before any other work (pre-flight).

``model.pretrained`` may be:

* ``none`` / null: train from scratch (:func:`resolve_pretrained` returns None);
* an ``http(s)://`` URL, e.g. the IBN-Net release :data:`IBN_NET_R50_URL`;
* an ``s3://bucket/key`` object (boto3 via :mod:`anet.mlops.storage.s3`: ``AWS_*`` from the environment);
* a local path or ``file://`` URL (used in place, never copied).

Remote files are downloaded once into the cache directory (``$ANET_WEIGHTS_DIR``, else
``~/.cache/anet/weights``) at ``<cache>/<host>/<url path>`` or ``<cache>/s3/<bucket>/<key>``, with
progress (tqdm on a TTY, log lines otherwise), through a temp file renamed into place only after the
check below, so the cache never holds a partial or wrong file. A cached file is reused without network.

Every file (downloaded, cached or local) is checked against, first match wins:

1. ``model.pretrained_sha256`` (the ``sha256`` argument): the full digest, to accept another file;
2. :data:`PINNED_SHA256`, by file name (the IBN-Net release the paper profiles train from);
3. a file named ``<name>-<hex>.<ext>`` (torch.hub's ``check_hash`` convention, >= 8 hex digits): the
   sha256 must start with ``<hex>``.

A mismatch, or an unreachable source with nothing cached, is one :class:`~anet.errors.UserError` line
(naming both hashes; the latter saying where to put the file by hand).

Example:
    >>> weights = resolve_model_weights(cfg.model)          # before data preparation / training
    >>> tracking.set_tags(pretrained_tags(weights))
    >>> model = build_model(cfg.model, num_ids, attr_classes, pretrained=weights.path if weights else None)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from anet.config import ModelCfg
from anet.errors import UserError
from anet.io import atomic_path, sha256_file
from anet.mlops.storage import s3

log = logging.getLogger(__name__)

IBN_NET_R50_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
NONE_VALUES = frozenset({"", "none", "null"})
# sha256 (or its published prefix) by release file name. No full sha256 of the IBN-Net v1.0 release file
# was found published (searched for "d9d0bb7b": the IBN-Net issues, FastReID and other code that downloads
# the file, web pages naming it); the digest published is torch.hub's 8-hex-digit prefix in the file name,
# so that prefix is the pin. The full digest of the file actually used is logged with every run
# (``pretrained.sha256``); put it into model.pretrained_sha256 to pin a trusted copy completely.
PINNED_SHA256: dict[str, str] = {"resnet50_ibn_a-d9d0bb7b.pth": "d9d0bb7b"}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
_MIB = 1024 * 1024
_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """A verified local weight file and where it came from."""

    path: Path  # local file to pass to the model builder
    source: str  # model.pretrained as given
    sha256: str  # hex digest of the file
    checked_against: str = "none"  # model.pretrained_sha256 / pinned / file name / none (module doc)


def default_cache_dir() -> Path:
    """``$ANET_WEIGHTS_DIR``, else ``~/.cache/anet/weights``."""
    env = os.environ.get("ANET_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anet" / "weights"


def cache_path(source: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a remote ``source`` is cached: ``<cache>/<host>/<path>`` or ``<cache>/s3/<bucket>/<key>``."""
    url = urllib.parse.urlparse(source)
    parts = [p for p in PurePosixPath(url.path).parts if p not in {"/", ".", ".."}]
    if not parts:
        raise UserError(f"{source}: model.pretrained needs a file name at the end of the URL")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    head = ["s3", url.netloc] if url.scheme == "s3" else [url.netloc.replace(":", "_")]
    return root.joinpath(*head, *parts)


def resolve_model_weights(model_cfg: ModelCfg, cache_dir: str | os.PathLike[str] | None = None
                          ) -> PretrainedWeights | None:
    """``model.pretrained`` checked against ``model.pretrained_sha256`` (module doc); None = from scratch."""
    return resolve_pretrained(model_cfg.pretrained, cache_dir, sha256=model_cfg.pretrained_sha256)


def resolve_pretrained(source: str | None, cache_dir: str | os.PathLike[str] | None = None,
                       sha256: str | None = None) -> PretrainedWeights | None:
    """Turn ``model.pretrained`` into a verified local file (downloading it once); None = from scratch.

    ``sha256`` (``model.pretrained_sha256``) is the full digest the file must have; without it the
    pinned digest of a known release file, else the prefix in the file name, is checked.

    Raises:
        UserError: unreachable source with nothing cached (says where to put the file), a hash that
        does not match the expected one (one line naming both), or a missing local file.

    Example:
        >>> resolve_pretrained(IBN_NET_R50_URL).path
        PosixPath('/home/me/.cache/anet/weights/github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth')
    """
    if source is None or source.strip().lower() in NONE_VALUES:
        return None
    source = source.strip()
    expected = _expected(source, sha256)
    scheme = urllib.parse.urlparse(source).scheme
    if scheme not in {"http", "https", "s3"}:
        path = _local_path(source, scheme)
        digest = _check_digest(source, sha256_file(path), f"the local file {path}", expected)
        return PretrainedWeights(path, source, digest, expected[1] if expected else "none")
    target = cache_path(source, cache_dir)
    if target.is_file():
        log.info("pretrained weights %s: using the cached %s", source, target)
        digest = _check_digest(source, sha256_file(target), f"the cached file {target}", expected)
    else:
        digest = _download(source, target, expected)
    return PretrainedWeights(target, source, digest, expected[1] if expected else "none")


def pretrained_tags(weights: PretrainedWeights | None) -> dict[str, str]:
    """Params to log with the run: ``pretrained.source``, ``pretrained.sha256`` and what it was checked
    against (``pretrained.sha256_check``: model.pretrained_sha256 / pinned / file name / none)."""
    if weights is None:
        return {"pretrained.source": "none", "pretrained.sha256": "", "pretrained.sha256_check": "none"}
    return {"pretrained.source": weights.source, "pretrained.sha256": weights.sha256,
            "pretrained.sha256_check": weights.checked_against}


def _local_path(source: str, scheme: str) -> Path:
    path = Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path)) if scheme == "file" \
        else Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"{path}: no such weights file (model.pretrained); give an existing path, an "
                        "http(s):// or s3:// URL, or none")
    return path


def _expected(source: str, sha256: str | None) -> tuple[str, str] | None:
    """(expected digest or prefix, where it comes from), first match of the module doc's order."""
    if sha256:
        return sha256.lower(), "model.pretrained_sha256"
    name = PurePosixPath(urllib.parse.urlparse(source).path).name
    if name in PINNED_SHA256:
        return PINNED_SHA256[name], "pinned"
    match = _HASH_IN_NAME.search(name)
    return (match.group(1), "file name") if match else None


def _check_digest(source: str, digest: str, what: str, expected: tuple[str, str] | None) -> str:
    if expected is None or digest.startswith(expected[0]):
        return digest
    want, why = expected
    shown = want if len(want) == 64 else f"{want}..."
    fix = "correct model.pretrained_sha256 or replace the file" if why == "model.pretrained_sha256" else \
        f"if this is the file you mean, set model.pretrained_sha256={digest}, else replace the file"
    raise UserError(f"{source}: sha256 mismatch: expected {shown} ({why}), {what} has {digest}; {fix}")


def _download(source: str, target: Path, expected: tuple[str, str] | None) -> str:
    """Download into ``target`` via a temp file; verify before the rename. Returns the sha256."""
    hint = f"without network, download it elsewhere and put it at {target} (or set model.pretrained to a local path)"
    with atomic_path(target) as tmp:
        if source.startswith("s3://"):
            _download_s3(source, tmp, hint)
            digest = sha256_file(tmp)
        else:
            digest = _download_http(source, tmp, hint)
        _check_digest(source, digest, "the downloaded file (discarded)", expected)
    log.info("pretrained weights %s: saved %s (sha256 %s)", source, target, digest)
    return digest


def _download_s3(source: str, tmp: Path, hint: str) -> None:

    log.info("downloading pretrained weights %s", source)
    try:
        s3.download_file(source, tmp, progress=sys.stderr.isatty())
    except UserError as exc:
        raise UserError(f"{exc}; {hint}") from None


def _download_http(source: str, tmp: Path, hint: str) -> str:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(source, timeout=30) as response, open(tmp, "wb") as fh:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress(total, PurePosixPath(urllib.parse.urlparse(source).path).name) as update:
                while block := response.read(_BLOCK):
                    fh.write(block)
                    digest.update(block)
                    update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(f"{source}: could not be reached ({type(exc).__name__}: {reason}); {hint}") from None
    return digest.hexdigest()


@contextlib.contextmanager
def _progress(total: int | None, name: str) -> Iterator[Callable[[int], None]]:
    """tqdm on a TTY; otherwise a log line at start, every 10 %, and at the end."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=f"download {name}", unit="B", unit_scale=True) as bar:
            yield bar.update
        return
    size = f"{total / _MIB:.1f} MiB" if total else "unknown size"
    log.info("downloading %s (%s)", name, size)
    state = {"done": 0, "next": 0.1}

    def update(n: int) -> None:
        state["done"] += n
        if total and state["done"] / total >= state["next"] and state["done"] < total:
            log.info("downloading %s: %d%% of %s", name, 100 * state["done"] // total, size)
            state["next"] += 0.1

    yield update
    log.info("downloaded %s: %.1f MiB", name, state["done"] / _MIB)
