"""Logging set-up for entry points (CLI, pipeline steps, drivers); importing this module does nothing.

Library modules only call ``logging.getLogger(__name__)``; an entry point calls :func:`setup_logging`
once so that INFO lines reach the terminal or the step log (kfp shows a step's stderr).

Example:
    >>> setup_logging()                      # level from $ANET_LOG_LEVEL, default INFO
    >>> logging.getLogger("anet").info("ready")
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | None = None) -> None:
    """Send ``anet``/``pipelines`` log records to stderr (idempotent)."""
    chosen = (level or os.environ.get("ANET_LOG_LEVEL") or "INFO").upper()
    root = logging.getLogger()
    if not any(getattr(h, "_anet", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._anet = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for name in ("anet", "pipelines"):
        logging.getLogger(name).setLevel(chosen)
    root.setLevel(logging.WARNING)
