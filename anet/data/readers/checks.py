"""Label checks shared by the readers: labels are checked, not trusted.

Example::

    from collections import Counter
    from anet.data.readers.checks import dedupe, check_disjoint

    notes = Counter()
    rows = dedupe(path, [(1, "0042_c007_1.jpg", {"colorID": 5}), (9, "0042_c007_1.jpg", {"colorID": 5})],
                  "image", notes)           # the line-9 repeat is dropped, logged, notes["duplicates_dropped"] == 1
    check_disjoint("vehicle id", train_first_lines, test_first_lines)   # a shared id is a UserError

Every problem is one :class:`~anet.errors.UserError` line that starts with ``file:line:``:
- the same key (image, vehicle) twice with different labels names both places and the labels
  that differ (``vehicle id`` differing = an image listed under two vehicle ids);
- an image or identity in both the training and a test list names the test line, the first training
  line, an example and the count (shared ones inflate every metric).
An exact repeat inside one file is dropped; the count is logged at WARNING and kept in
``Manifest.notes["duplicates_dropped"]``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from anet.errors import UserError

log = logging.getLogger("anet.data.readers")

Row = tuple[int, str, Mapping[str, Any]]  # (1-based line, key, labels)
Where = tuple[Path, int]  # (file, 1-based line)


def dedupe(path: Path, rows: Iterable[Row], what: str, notes: Counter[str],
           seen: dict[str, tuple[Path, int, Mapping[str, Any]]] | None = None) -> list[Row]:
    """Keep the first row of each key of ``path``; drop exact repeats, fail on conflicting ones.

    ``seen`` (key -> first file, line, labels), shared between several files, extends the conflict
    check across them; an identical row in ANOTHER file is kept (VeRi-Wild and VehicleID test sets
    are nested, so their images repeat from one list to the next).
    """
    seen = {} if seen is None else seen
    kept: list[Row] = []
    dropped = 0
    for lineno, key, labels in rows:
        first = seen.get(key)
        if first is None:
            seen[key] = (path, lineno, labels)
            kept.append((lineno, key, labels))
            continue
        first_path, first_line, first_labels = first
        if first_labels != labels:
            raise UserError(f"{path}:{lineno}: {what} {key} is listed twice with different labels: "
                            f"{_differ(labels, first_labels)} here, {_differ(first_labels, labels)} at "
                            f"{_short(first_path, path)}:{first_line}; fix or delete one of the lines")
        if first_path == path:
            dropped += 1
        else:
            kept.append((lineno, key, labels))
    if dropped:
        log.warning("%s: dropped %d exact duplicate %s line%s", path, dropped, what, "" if dropped == 1 else "s")
        notes["duplicates_dropped"] += dropped
    return kept


def first_lines(path: Path, keys: Iterable[tuple[int, str]],
                into: dict[str, Where] | None = None) -> dict[str, Where]:
    """``{key: (path, first line)}`` for ``(line, key)`` pairs, added to ``into`` (first file wins)."""
    into = {} if into is None else into
    for lineno, key in keys:
        into.setdefault(key, (path, lineno))
    return into


def check_disjoint(what: str, train: Mapping[str, Where], test: Mapping[str, Where]) -> None:
    """Fail with one line if a key (image or vehicle id) occurs in both the train and the test lists.

    The error names the first offending test line, the training line of the same key and the count.
    """
    shared = [key for key in test if key in train]
    if not shared:
        return
    key = min(shared, key=lambda k: (str(test[k][0]), test[k][1]))
    (path, lineno), (train_path, train_line) = test[key], train[key]
    noun = what if len(shared) == 1 else f"{what}s"
    raise UserError(f"{path}:{lineno}: {what} {key} is also in the training list {train_path}:{train_line} "
                    f"({len(shared)} {noun} shared between train and test, e.g. {', '.join(sorted(shared)[:3])}); "
                    "shared ones inflate every metric: train and test must be disjoint")


def _differ(labels: Mapping[str, Any], other: Mapping[str, Any]) -> str:
    """The labels of ``labels`` that differ from ``other``: ``colorID=5, typeID=1``."""
    return ", ".join(f"{k}={labels.get(k)}" for k in labels if labels.get(k) != other.get(k)) or "(none)"


def _short(first: Path, here: Path) -> str:
    """The other file's name alone when it sits next to ``here`` (keeps the line short)."""
    return first.name if first.parent == here.parent else str(first)
