"""Drill: every command checks where it writes before it works; a pickled checkpoint is one line.

Root may write anywhere, so the commands run under ``setpriv`` without ``CAP_DAC_OVERRIDE`` and
``CAP_DAC_READ_SEARCH``: a 0o555 folder is then read-only for them, as for any user. ``anet evaluate``
and ``anet index`` used to embed everything and then die with a PermissionError traceback, ``anet
data synth`` rendered first; each now ends at once in one ``error:`` line naming ``--out``, exit 2.
A checkpoint that is a pickle of objects (loads only with ``weights_only=False``), given to
``--init-from``, ``anet evaluate --checkpoint`` or found as ``last.pt``, is one line naming the file,
never torch's multi-line advice to load it unsafely.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
          "--bounding-set=-dac_override,-dac_read_search"]
EXPECT_OUT = "exit 2 before any work: one error line naming --out, no traceback, nothing written"
EXPECT_PICKLE = "exit 2: one error line naming the file, no weights_only=False advice, no traceback"

pytestmark = pytest.mark.slow


def _anet(*argv: str, head: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*head, sys.executable, "-m", "anet", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _one_error_line(done: subprocess.CompletedProcess, *names: str) -> str:
    """The run ended with exit 2 and one ``error:`` line (the last) naming ``names``; returns it."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and lines, f"exit {done.returncode}: {done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr and lines[-1].startswith("error: "), done.stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1
    assert all(name in lines[-1] for name in names), lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("unwritable-drill")


@pytest.fixture(scope="module")
def trained(workdir) -> Path:
    """Stage one of the smoke profile (2 epochs): a real checkpoint and a prepared cache. Its overrides
    stand before, between and after the options (argparse used to refuse all but the first run)."""
    done = _anet("train", f"data.root={workdir / 'data'}", "--config", "smoke", f"data.cache_dir={workdir / 'cache'}",
                 "--stage", "one", "--out", str(workdir / "run"), "--no-progress", "stage_one.epochs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir / "run" / "stage_one" / "final.pt"


def test_train_overrides_anywhere_among_the_options(workdir, trained, drill):
    drill("anet train key=value overrides before, between and after the options",
          "every override applies (data root, cache, 2 epochs), none is refused as unrecognised")
    assert torch.load(trained, weights_only=True)["epoch"] == 2
    assert (workdir / "data").is_dir() and _cache(workdir).is_dir()


def _smoke(workdir: Path) -> list[str]:
    return ["train", "--config", "smoke", f"data.root={workdir / 'data'}", f"data.cache_dir={workdir / 'cache'}",
            "--no-progress"]


@pytest.fixture(scope="module")
def read_only(workdir) -> Path:
    """A 0o555 folder; skips when setpriv is missing or does not make it read-only for root here."""
    folder = workdir / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv command")
    probe = subprocess.run([*NO_DAC, "touch", str(folder / "probe")], capture_output=True, text=True)
    if probe.returncode == 0:
        pytest.skip("setpriv without dac_override still writes a 0o555 folder here")
    return folder


def _cache(workdir: Path) -> Path:
    [cache] = [p for p in (workdir / "cache").iterdir() if not p.name.startswith(".")]
    return cache


@pytest.mark.parametrize("command", ["evaluate", "index", "data synth", "train"])
def test_an_unwritable_out_is_one_line_before_any_work(workdir, trained, read_only, drill, command):
    drill(f"anet {command} --out into a read-only folder (root without dac_override)", EXPECT_OUT)
    out = read_only / command.replace(" ", "-")
    argv = {"evaluate": ["evaluate", "--checkpoint", str(trained), "--cache", str(_cache(workdir)), "--profile",
                         "smoke"],
            "index": ["index", "--model", "models:/anet-smoke@champion", "--folder", str(workdir / "data"),
                      "--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"],
            "data synth": ["data", "synth", "--profile", "smoke"],
            "train": _smoke(workdir)}[command]
    done = _anet(*argv, "--out", str(out), head=tuple(NO_DAC))
    line = _one_error_line(done, str(out), "--out", "not writable (Permission denied")
    assert "user root" in line and os.listdir(read_only) == []
    assert not (workdir / "mlflow.db").exists()  # index stopped before it connected


@pytest.mark.parametrize("where", ["evaluate --checkpoint", "train --init-from", "last.pt of a resume"])
def test_a_pickled_checkpoint_is_one_line_naming_it(workdir, trained, drill, where):
    drill(f"a pickled checkpoint (not loadable with weights_only=True) as {where}", EXPECT_PICKLE)
    pickled = workdir / "pickled.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, pickled)  # how many training scripts save
    match where:
        case "evaluate --checkpoint":
            done = _anet("evaluate", "--checkpoint", str(pickled), "--cache", str(_cache(workdir)), "--profile",
                         "smoke", "--out", str(workdir / "eval"))
        case "train --init-from":
            done = _anet(*_smoke(workdir), "--stage", "two", "--init-from", str(pickled), "--out",
                         str(workdir / "init-from"))
        case _:
            pickled = workdir / "resume" / "stage_one" / "last.pt"
            pickled.parent.mkdir(parents=True)
            shutil.copyfile(workdir / "pickled.pt", pickled)
            done = _anet(*_smoke(workdir), "--stage", "one", "--out", str(workdir / "resume"))
    _one_error_line(done, str(pickled), "argparse.Namespace")
    assert "weights_only=False" not in done.stderr
