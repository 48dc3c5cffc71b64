"""Logging set-up for entry points (CLI, pipeline steps, drivers); importing this module does nothing.

Library modules only call ``logging.getLogger(__name__)``; an entry point calls :func:`setup_logging`
once so that INFO lines reach the terminal or the step log. A host that already installed a root
handler (kfp's executor, pytest) keeps printing them with its own; a second handler would print every
line twice.

Example:
    >>> setup_logging()                      # level from $ANET_LOG_LEVEL, default INFO
    >>> logging.getLogger("anet").info("ready")
"""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOGGERS = ("anet", "pipelines", "bench")


def setup_logging(level: str | None = None) -> None:
    """Let ``anet``/``pipelines``/``bench`` INFO records reach stderr, once (idempotent)."""
    chosen = (level or os.environ.get("ANET_LOG_LEVEL") or "INFO").upper()
    for name in LOGGERS:
        logging.getLogger(name).setLevel(chosen)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)  # other libraries stay quiet unless they warn
