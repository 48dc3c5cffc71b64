"""Readers of the real on-disk dataset layouts; each returns a :class:`~anet.data.manifest.Manifest`.

Example::

    from anet.data.readers import read_dataset
    manifest = read_dataset("veriwild", "data/veriwild")     # or "veri776", "vehicleid"

Every problem a user can fix is one :class:`~anet.errors.UserError` line: ``file:line: what is wrong``
for malformed, undecodable, conflicting or duplicated lines and for train/test overlaps (see
:mod:`anet.data.readers.checks`), and the files that were looked for when the root is not the
expected layout. Listed-but-missing images are NOT an error here (unless every image of a list is
missing: wrong root): they are logged, counted in ``Manifest.notes["images_missing"]`` and kept, so
that the prepare step quarantines them (reason ``missing``) against ``data.quarantine_max_fraction``.

The helpers the three reader modules share live in :mod:`anet.data.readers.common`.
"""

from __future__ import annotations

import os

from anet.data.manifest import Manifest
from anet.data.readers.common import SIGNATURES
from anet.data.readers.vehicleid import read_vehicleid
from anet.data.readers.veri776 import read_veri776
from anet.data.readers.veriwild import read_veriwild
from anet.errors import UserError


def read_dataset(name: str, root: str | os.PathLike[str]) -> Manifest:
    """Parse the dataset ``name`` found at ``root`` into a manifest.

    Example:
        >>> manifest = read_dataset("veri776", "data/veri776")   # doctest: +SKIP
        >>> manifest.summary()                                    # doctest: +SKIP
    """
    match name:
        case "veri776":
            return read_veri776(root)
        case "veriwild":
            return read_veriwild(root)
        case "vehicleid":
            return read_vehicleid(root)
        case _:
            raise UserError(f"unknown dataset {name!r}; readers exist for {', '.join(SIGNATURES)} "
                            "(the synthetic set is generated with `anet data synth`)")
