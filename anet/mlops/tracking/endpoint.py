"""The tracking server's address: credentials kept out of URLs, messages and logs; a health check.

A URI such as ``https://alice:s3cret@mlflow.example.org`` is split once, in
:func:`anet.mlops.tracking.tracking.configure`: the user name and password go to
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (which the MLflow client sends as HTTP
basic auth, and which step subprocesses inherit) and only ``https://mlflow.example.org`` is used
as the tracking URI, so no MLflow error message can contain the password::

    uri = export_credentials("https://alice:s3cret@mlflow.example.org")   # 'https://mlflow.example.org'
    check_tracking_server(uri)                                          # basic auth from the env vars
    redact_url("see http://bob:pw@host:5000/x")                        # 'see http://***@host:5000/x'
"""

from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from anet.errors import UserError

USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"
_URL_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_exported: dict[str, str] = {}  # the credential env vars export_credentials() set (and may unset again)


def redact_url(text: str) -> str:
    """Mask ``user:password@`` in URLs so they can go into messages and logs."""
    return _URL_USERINFO.sub("***@", text)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``http://u:p@host/x`` -> ``("http://host/x", "u", "p")`` (percent-escapes decoded)."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme.startswith("http") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return bare, urllib.parse.unquote(user) or None, urllib.parse.unquote(password) if password else None


def export_credentials(uri: str) -> str:
    """Move ``user:password@`` from an http(s) URI into MLflow's env vars; return the bare URI.

    A URI without credentials leaves env vars the user set alone, but unsets the ones an earlier
    call exported (switching servers must not send one server's password to another).
    """
    bare, user, password = split_credentials(uri)
    if user is None:
        for name, value in list(_exported.items()):
            if os.environ.get(name) == value:
                del os.environ[name]
            del _exported[name]
        return bare
    for name, value in ((USERNAME_ENV, user), (PASSWORD_ENV, password or "")):
        os.environ[name] = _exported[name] = value
    return bare


def auth_headers(uri: str) -> dict[str, str]:
    """The Authorization header MLflow's client would send to ``uri`` (URL userinfo first, then env)."""
    _, user, password = split_credentials(uri)
    if user is None:
        user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user and password is not None:
        token = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    if os.environ.get(TOKEN_ENV):
        return {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"}
    return {}


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (one line naming the URL, password masked) when an http(s) server is unreachable.

    Credentials in the URL (or in ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``) are sent as basic auth,
    as the MLflow client sends them, so a server behind an authenticating proxy passes. For a
    sqlite URI the directory holding the database must exist. Other schemes pass unchecked.

    Example:
        >>> check_tracking_server("http://127.0.0.1:5000")      # doctest: +SKIP
    """
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise UserError(f"MLflow tracking URI {uri}: directory {folder} does not exist; create it first")
        return
    if not uri.startswith(("http://", "https://")):
        return
    bare = split_credentials(uri)[0]
    request = urllib.request.Request(bare.rstrip("/") + "/health", headers=auth_headers(uri))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 (http(s) only)
            reply.read(64)
    except urllib.error.HTTPError as exc:
        raise UserError(f"MLflow tracking server {redact_url(uri)} answered HTTP {exc.code} on /health"
                        f"{_http_hint(exc.code)}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = redact_url(str(getattr(exc, "reason", exc)))
        raise UserError(
            f"MLflow tracking server {redact_url(uri)} is unreachable ({reason}); start it or unset "
            "MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def _http_hint(code: int) -> str:
    if code == 401:
        return (" (credentials missing or wrong: put them in the URL or in MLFLOW_TRACKING_USERNAME/"
                "MLFLOW_TRACKING_PASSWORD)")
    if code == 403:
        return " (the server rejects this Host header or these credentials: start it with --allowed-hosts)"
    return ""
