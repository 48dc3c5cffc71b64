"""S3 helpers (boto3): a client from the environment, a fail-fast endpoint check, transfers.

Configuration comes only from the environment, never from code or config files:
``AWS_ENDPOINT_URL`` (an S3-compatible server such as MinIO or moto; unset = AWS),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or a profile / instance role), and
``AWS_DEFAULT_REGION`` (default us-east-1). Transfers are multipart above 8 MiB and show a tqdm
progress bar. Missing credentials, an unreachable endpoint, a missing bucket or a denied request
become one :class:`~anet.errors.UserError` line naming the URL and what to set.

Bounded waits: connecting and each read give up after ``ANET_S3_TIMEOUT_S`` seconds (default 10), a
request is tried ``ANET_S3_MAX_ATTEMPTS`` times (default 3). :func:`check_endpoint` tries once, so an
endpoint that accepts connections but never answers fails within about ``ANET_S3_TIMEOUT_S``.

Example:
    >>> check_endpoint("s3://datasets/veri776.zip")         # fails fast with a readable message
    >>> download_file("s3://datasets/veri776.zip", Path("/tmp/veri776.zip"))
    >>> upload_file(Path("model.pt"), "s3://models/anet/model.pt")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from anet.errors import UserError
from anet.io import atomic_path

MIB = 1024 * 1024
TIMEOUT_ENV, ATTEMPTS_ENV = "ANET_S3_TIMEOUT_S", "ANET_S3_MAX_ATTEMPTS"
DEFAULT_TIMEOUT_S, DEFAULT_ATTEMPTS = 10.0, 3
CREDENTIALS_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a non-AWS server)"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ("bucket", "some/key"); the key may be empty."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise UserError(f"{uri}: not an S3 URI; expected s3://<bucket>/<key>")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def endpoint_url() -> str | None:
    """The S3 endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (None = AWS)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def timeout_s() -> float:
    """Seconds to connect, and to wait for each read (``ANET_S3_TIMEOUT_S``, default 10)."""
    return _env_number(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, float)


def max_attempts() -> int:
    """Tries per request, the first included (``ANET_S3_MAX_ATTEMPTS``, default 3)."""
    return int(_env_number(ATTEMPTS_ENV, DEFAULT_ATTEMPTS, int))


def _env_number(name: str, default: float, kind: type) -> float:
    """A positive finite number from the environment; one line naming the variable when it is not."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise UserError(f"{name}={text!r}: expected a positive {'whole ' if kind is int else ''}number")
    return value


def client(endpoint: str | None = None, attempts: int | None = None) -> Any:
    """A boto3 S3 client for ``endpoint`` (default: from the environment); path-style on custom servers.

    Timeouts and tries come from the environment (module docstring); ``attempts`` overrides the tries.
    """
    import boto3
    from botocore.config import Config

    endpoint = endpoint or endpoint_url()
    config = Config(
        connect_timeout=timeout_s(),
        read_timeout=timeout_s(),
        retries={"total_max_attempts": attempts or max_attempts(), "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else {},
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)


@contextlib.contextmanager
def s3_errors(url: str, endpoint: str | None = None) -> Iterator[None]:
    """Translate botocore failures for ``url`` into one-line UserErrors."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = endpoint or endpoint_url() or "AWS default"
    where = url if url == endpoint else f"{url} (endpoint {endpoint})"
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise UserError(f"{where}: no S3 credentials found; {CREDENTIALS_HINT}") from None
    except (EndpointConnectionError, ConnectTimeoutError):
        raise UserError(f"{where}: S3 endpoint unreachable; check AWS_ENDPOINT_URL and that the server "
                        "is running") from None
    except ReadTimeoutError:
        raise UserError(f"{where}: S3 endpoint accepted the connection but did not answer within "
                        f"{timeout_s():g} s ({TIMEOUT_ENV}); check that it is a healthy S3 server") from None
    except ConnectionClosedError:
        raise UserError(f"{where}: S3 endpoint closed the connection without answering; check that it is a "
                        "healthy S3 server") from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchBucket", "NoSuchKey", "NotFound"}:
            raise UserError(f"{where}: not found ({code}); check the bucket and key") from None
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            raise UserError(f"{where}: access denied ({code}); check AWS_ACCESS_KEY_ID / "
                            "AWS_SECRET_ACCESS_KEY") from None
        raise UserError(f"{where}: S3 request failed ({code}: {exc})") from None


def check_endpoint(url: str | None = None) -> None:
    """Fail fast before long work: reach the endpoint (and the bucket of an ``s3://`` URI).

    ``url`` may be ``None`` (the environment's endpoint), an ``http(s)://`` endpoint, or an
    ``s3://bucket/...`` URI whose bucket must exist. Raises UserError; returns None when usable.
    One try, so it answers within about ``ANET_S3_TIMEOUT_S`` even when the server never replies.
    """
    if url and url.startswith("s3://"):
        bucket, _ = parse_s3_uri(url)
        with s3_errors(url):
            client(attempts=1).head_bucket(Bucket=bucket)
        return
    endpoint = url or endpoint_url()
    with s3_errors(endpoint or "s3://", endpoint):
        client(endpoint, attempts=1).list_buckets()


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress)


def upload_file(path: str | os.PathLike[str], uri: str, progress: bool = True) -> str:
    """Upload one file to ``s3://bucket/key`` (multipart above 8 MiB). Returns the URI."""
    bucket, key = parse_s3_uri(uri)
    path = Path(path)
    with s3_errors(uri), _bar(path.stat().st_size, f"upload {path.name}", progress) as bar:
        client().upload_file(str(path), bucket, key, Config=_transfer_config(), Callback=bar.update)
    return uri


def download_file(uri: str, path: str | os.PathLike[str], progress: bool = True) -> Path:
    """Download ``s3://bucket/key`` to ``path`` atomically (multipart above 8 MiB)."""
    bucket, key = parse_s3_uri(uri)
    s3 = client()
    with s3_errors(uri):
        size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        with atomic_path(path) as tmp, _bar(size, f"download {PurePosixPath(key).name}", progress) as bar:
            s3.download_file(bucket, key, str(tmp), Config=_transfer_config(), Callback=bar.update)
    return Path(path)


def list_keys(uri: str) -> list[tuple[str, int]]:
    """(key, size) of every object under the prefix of ``uri``."""
    bucket, prefix = parse_s3_uri(uri)
    keys: list[tuple[str, int]] = []
    with s3_errors(uri):
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend((obj["Key"], int(obj["Size"])) for obj in page.get("Contents", []))
    return keys


def download_prefix(uri: str, dest: str | os.PathLike[str], progress: bool = True) -> int:
    """Download every object under ``s3://bucket/prefix/`` into ``dest``, keeping relative paths.

    Keys that would land outside ``dest`` (``..``, absolute) are refused. Returns the file count.
    """
    bucket, prefix = parse_s3_uri(uri)
    base = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    keys = [(k, s) for k, s in list_keys(f"s3://{bucket}/{base}") if not k.endswith("/")]
    if not keys:
        raise UserError(f"{uri}: no objects under this prefix; check the bucket and prefix")
    dest = Path(dest)
    s3 = client()
    with s3_errors(uri), _bar(sum(s for _, s in keys), f"download {uri}", progress) as bar:
        for key, _ in keys:
            rel = key[len(base):]
            parts = rel.split("/")
            if rel.startswith("/") or ".." in parts:
                raise UserError(f"{uri}: object key {key!r} would be written outside the destination; refusing")
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target), Config=_transfer_config(), Callback=bar.update)
    return len(keys)
