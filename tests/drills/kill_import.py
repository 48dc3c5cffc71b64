"""Run ``anet data import`` and kill -9 its whole process group at one point: the child of the import drill.

    python tests/drills/kill_import.py extract:60 -- data import veri776 VeRi.tar.gz   # after 60 files extracted
    python tests/drills/kill_import.py dvc-add:start -- data import ...   # `dvc add` started, still loading
    python tests/drills/kill_import.py dvc-add:cache -- data import ...   # `dvc add`'s first object in the cache

The drill starts this in a session of its own; SIGKILL to the group takes the importer and its ``dvc``
child together, as a deleted pod or the out-of-memory killer would: no ``finally``, no clean-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path


def _die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def kill_mid_extract(files: int) -> None:
    """Die once ``files`` regular files of the archive are written."""
    real = tarfile.TarFile.makefile
    written = [0]

    def makefile(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, targetpath: str) -> None:
        real(self, tarinfo, targetpath)
        written[0] += 1
        if written[0] >= files:
            _die()

    tarfile.TarFile.makefile = makefile  # type: ignore[method-assign]


def kill_mid_dvc_add(moment: str) -> None:
    """Die while ``dvc add`` runs: right after it started, or when its first object reaches the cache."""
    real = subprocess.run

    def run(args, *rest, **kwargs):  # noqa: ANN001, ANN202 (subprocess.run's signature)
        if list(args[1:3]) != ["-m", "dvc"] or "add" not in args:
            return real(args, *rest, **kwargs)
        kwargs.pop("capture_output", None)
        kwargs.pop("text", None)
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        objects = Path(kwargs.get("cwd") or ".") / ".dvc" / "cache" / "files" / "md5"
        deadline = time.monotonic() + 60
        if moment == "start":
            time.sleep(0.3)  # dvc is still importing itself: nothing written yet
        while moment == "cache" and time.monotonic() < deadline and not any(objects.glob("*/*")):
            time.sleep(0.002)
        _die()

    subprocess.run = run


def arm(spec: str) -> None:
    """Install the kill point described by ``spec`` (module docstring)."""
    kind, _, arg = spec.partition(":")
    match kind:
        case "extract":
            kill_mid_extract(int(arg))
        case "dvc-add":
            kill_mid_dvc_add(arg)
        case _:
            raise SystemExit(f"unknown kill point {spec!r}")


def main(argv: list[str]) -> int:
    """``kill_import.py SPEC -- ANET ARGS...``."""
    spec, sep, *anet_args = argv
    if sep != "--":
        raise SystemExit(__doc__)
    arm(spec)
    from anet.cli import main as anet_main

    return anet_main(anet_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
