"""Run ``anet train`` and kill -9 this very process at one point: the child of the resume drill.

    python tests/drills/kill_train.py step:stage_one:2:3 -- train --config smoke ...   # after epoch 2 step 3
    python tests/drills/kill_train.py save:stage_two:1 -- train ...    # halfway through writing last.pt (epoch 1)
    python tests/drills/kill_train.py copy:stage_one -- train ...      # halfway through copying last.pt to final.pt

SIGKILL leaves no chance to clean up: no ``finally``, no atexit, no flush, exactly as ``kill -9`` or the
out-of-memory killer. A half-written file is flushed and fsynced first, so it is on disk as a kill
between two writes would leave it.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import sys
from pathlib import Path

import torch


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _half(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write the first half of ``data`` to ``path``, make it durable, die."""
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    _die()


def kill_at_step(stage: str, epoch: int, step: int) -> None:
    """Die right after optimiser step ``step`` of ``epoch`` of ``stage`` (the run log's callback sees it)."""
    import anet.cli.train as train_cli

    class KillAtStep(train_cli.JsonlLogCallback):
        def on_step_end(self, stage_name: str, ep: int, st: int, loss: float) -> None:
            if (stage_name, ep, st) == (stage, epoch, step):
                _die()

    train_cli.JsonlLogCallback = KillAtStep


def kill_mid_save(stage: str, epoch: int) -> None:
    """Die halfway through writing the checkpoint of ``epoch`` of ``stage`` (its temp file stays)."""
    real = torch.save

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN202 (torch.save's signature)
        if isinstance(obj, dict) and (obj.get("stage"), obj.get("epoch")) == (stage, epoch):
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            _half(buffer.getvalue(), f)
        return real(obj, f, *args, **kwargs)

    torch.save = save


def kill_mid_copy(stage: str) -> None:
    """Die halfway through copying ``<stage>/last.pt`` to ``final.pt``."""
    real = shutil.copyfile

    def copyfile(src, dst, *args, **kwargs):  # noqa: ANN001, ANN202 (shutil.copyfile's signature)
        if Path(src).name == "last.pt" and Path(src).parent.name == stage:
            _half(Path(src).read_bytes(), dst)
        return real(src, dst, *args, **kwargs)

    shutil.copyfile = copyfile


def arm(spec: str) -> None:
    """Install the kill point described by ``spec`` (module docstring)."""
    kind, stage, *numbers = spec.split(":")
    match kind:
        case "step":
            kill_at_step(stage, int(numbers[0]), int(numbers[1]))
        case "save":
            kill_mid_save(stage, int(numbers[0]))
        case "copy":
            kill_mid_copy(stage)
        case _:
            raise SystemExit(f"unknown kill point {spec!r}")


def main(argv: list[str]) -> int:
    """``kill_train.py SPEC -- ANET ARGS...``."""
    spec, sep, *anet_args = argv
    if sep != "--":
        raise SystemExit(__doc__)
    arm(spec)
    from anet.cli import main as anet_main

    return anet_main(anet_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
