"""Up-front checks (issue 12 item 5): each problem is one ``error:`` line, exit 2, before any work.

Unwritable folders (cache, data root, --out, the pipeline root), config values out of range or not
finite (naming the command line or the profile file they came from), corrupt archives in
``anet data import``, and an S3 endpoint that accepts connections but never answers.
Root passes ``os.access`` on any mode, so permissions are denied either by a file standing where a
folder must be, or by running the check as ``nobody`` in a subprocess.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from anet.config import ConfigError, load_config
from anet.errors import UserError
from anet.mlops.storage import s3
from anet.steps.preflight import check_run_paths, check_writable

ROOT = Path(__file__).resolve().parent.parent


def _anet(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Run the ``anet`` CLI in-process; (exit status, stderr lines)."""
    from anet.cli import main

    status = main(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def _smoke(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", "smoke", f"data.root={tmp_path / 'data'}", f"data.cache_dir={tmp_path / 'cache'}", *extra]


# --------------------------------------------------------------------------- writable folders
def test_a_file_where_a_folder_must_be_is_named_with_its_setting(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for folder in (blocker, blocker / "runs" / "x"):
        with pytest.raises(UserError, match=rf"^{folder}: cannot be a folder, {blocker} is a file; --out: "):
            check_writable(folder, "--out")
    check_writable(tmp_path / "new" / "deeper", "--out")  # absent but creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to the user nobody")
def test_permission_denied_as_another_user_names_the_user():
    """Root may write anywhere (os.access says yes), so the check runs as ``nobody`` in a subprocess."""
    shared = Path(tempfile.mkdtemp(prefix="anet-preflight-"))
    try:
        shared.chmod(0o755)  # root's folder: nobody may enter, not write
        code = ("import os, sys\nfrom anet.errors import UserError\nfrom anet.steps.preflight import check_writable\n"
                "os.setgid(65534); os.setuid(65534)\n"
                "try:\n    check_writable(sys.argv[1], 'data.cache_dir')\n"
                "except UserError as exc:\n    print(exc); sys.exit(2)\n")
        for folder in (shared, shared / "cache" / "anet"):
            done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True,
                                  cwd=ROOT, timeout=120)
            assert done.returncode == 2, done.stderr
            assert done.stdout.strip().startswith(f"{folder}: not writable (Permission denied")
            assert "user nobody); data.cache_dir: choose another folder" in done.stdout
        assert os.listdir(shared) == []  # no probe file left behind
    finally:
        os.rmdir(shared)


def test_train_with_an_unwritable_out_stops_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    started = time.monotonic()
    status, err = _anet(["train", *_smoke(tmp_path), "--out", str(tmp_path / "file" / "run"), "--no-progress"],
                        capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'file' / 'run'}: cannot be")
    assert "--out" in err[0] and time.monotonic() - started < 30
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()  # nothing generated or prepared


@pytest.mark.parametrize(("key", "setting"), [("data.cache_dir", "data.cache_dir"), ("data.root", "data.root")])
def test_unwritable_cache_or_data_root_is_one_line(tmp_path, capsys, key, setting):
    (tmp_path / "file").write_text("x")
    argv = ["train", *_smoke(tmp_path), f"{key}={tmp_path / 'file' / 'sub'}", "--out", str(tmp_path / "run")]
    status, err = _anet(argv, capsys)
    assert status == 2 and len(err) == 1 and setting in err[0] and "is a file" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_generated_synthetic_root_needs_no_write_access(tmp_path, monkeypatch):
    """Reusing a complete generation writes nothing in the data folder, so it is not probed."""
    cfg = load_config("smoke", [f"data.root={tmp_path / 'ro' / 'smoke'}", f"data.cache_dir={tmp_path / 'cache'}"])
    monkeypatch.setattr("anet.steps.preflight.is_generated", lambda synthetic, root: True)
    probed: list[str] = []
    monkeypatch.setattr("anet.steps.preflight.check_writable", lambda folder, setting: probed.append(setting))
    check_run_paths(cfg, outputs={"--out": tmp_path / "run"})
    assert probed == ["data.cache_dir", "--out"]


def test_pipeline_runner_checks_its_root_before_anything_starts(tmp_path, capsys):
    from pipelines.run import main

    (tmp_path / "file").write_text("x")
    status = main(["--profile", "smoke", "--pipeline-root", str(tmp_path / "file" / "outputs"),
                   "--set", f"data.root={tmp_path / 'data'}", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err[-1].startswith("error: ") and "--pipeline-root" in err[-1]
    assert not (tmp_path / "data").exists()


def test_data_import_into_an_unwritable_data_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status, err = _anet(["data", "import", "veri776", str(tmp_path), "--data-dir", str(tmp_path / "file" / "d"),
                         "--no-push"], capsys)
    assert status == 2 and len(err) == 1 and "--data-dir" in err[0]


# --------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override", ["stage_one.lr=inf", "stage_one.lr=.nan", "stage_two.weight_decay=inf",
                                      "loss.lambda_a=inf", "loss.lambda_van=nan", "loss.triplet_margin=.inf"])
def test_learning_rates_and_loss_weights_must_be_finite(override):
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError, match=rf"^{key}=\S+ \(command line\): Input should be a finite number$"):
        load_config("smoke", [override])


@pytest.mark.parametrize("size", ["[16, 16]", "[31, 64]", "[64, 1025]", "[2048, 2048]"])
def test_image_size_outside_what_the_backbone_takes(size):
    with pytest.raises(ConfigError, match=r"^data\.image_size=\[\d+, \d+\] \(command line\): each side must be "
                                          r"32\.\.1024 px"):
        load_config("smoke", [f"data.image_size={size}"])


def test_image_size_needs_no_multiple_of_the_stride():
    """The pooling is adaptive: 33 x 47 builds and runs (measured: 17 x 31 trains, 16 x 16 does not)."""
    assert load_config("smoke", ["data.image_size=[33, 47]"]).data.image_size == (33, 47)


def test_a_bad_value_in_the_profile_names_the_file(tmp_path):
    profile = tmp_path / "x.yaml"
    profile.write_text((ROOT / "configs" / "smoke.yaml").read_text().replace("lr: 6.0e-4", "lr: .inf"))
    with pytest.raises(ConfigError, match=rf"^{profile}: stage_one\.lr: Input should be a finite number \(got inf\)$"):
        load_config(str(profile), ["loss.lambda_a=0.5"])  # an unrelated override does not take the blame


def test_cli_prints_the_source_of_a_bad_value_in_one_line(capsys):
    status, err = _anet(["train", "--config", "smoke", "stage_one.lr=inf"], capsys)
    assert status == 2 and err == ["error: stage_one.lr=inf (command line): Input should be a finite number"]


# --------------------------------------------------------------------------- archives
def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(3):
            zf.writestr(f"VeRi/image_train/{i:04d}_c001.jpg", bytes(range(256)) * 40)
    return path


def _tar(path: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"VeRi/image_train/{i:04d}_c001.jpg")
            info.size = 10240
            tf.addfile(info, io.BytesIO(os.urandom(10240)))
    return path


def _flip(path: Path, at: int) -> Path:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _cut(path: Path, keep: float) -> Path:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])
    return path


@pytest.mark.parametrize(("make", "what"), [
    (lambda d: _flip(_zip(d / "VeRi.zip"), 2000), r"corrupt or truncated archive at member 'VeRi/image_train/0000"
                                                  r"_c001\.jpg' \(Bad CRC-32"),
    (lambda d: _cut(_zip(d / "VeRi.zip"), 0.6), r"not a readable zip file \(File is not a zip file\); is it complete"),
    (lambda d: _cut(_tar(d / "VeRi.tar.gz"), 0.5), r"corrupt or truncated archive \(Compressed file ended"),
    (lambda d: _flip(_tar(d / "VeRi.tar.gz"), 4000), r"corrupt or truncated archive \((CRC check failed|Error -3)"),
    (lambda d: _cut(_tar(d / "VeRi.tar", "w"), 0.7), r"corrupt or truncated archive .*unexpected end of data"),
    (lambda d: _flip(_tar(d / "VeRi.tar", "w"), 2 * (512 + 10240) + 100), r"damaged header at byte 21504 after "
                                                                         r"member 'VeRi/image_train/0001_c001\.jpg'"),
    (lambda d: (d / "VeRi.tar.xz").write_bytes(b"") or d / "VeRi.tar.xz", r"not a readable tar archive \(xz: "),
], ids=["zip bad CRC", "zip cut short", "tar.gz cut short", "tar.gz byte flipped", "tar cut short",
        "tar header damaged mid-archive", "tar.xz empty"])
def test_corrupt_archives_are_one_line_naming_the_archive(tmp_path, capsys, make, what):
    archive = make(tmp_path)
    status, err = _anet(["data", "import", "veri776", str(archive), "--data-dir", str(tmp_path / "data"),
                         "--no-push"], capsys)
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {archive}: ") and "download it again" in err[0]
    assert __import__("re").search(what, err[0]), err[0]
    assert os.listdir(tmp_path / "data") == []  # the staging folder is gone, nothing was moved in


def test_a_downloaded_archive_is_named_by_its_source(tmp_path):
    """A copy fetched from S3 sits in a staging folder that is gone when the user reads the line."""
    from anet.data.archive import extract_archive

    archive = _cut(_zip(tmp_path / "VeRi.zip"), 0.6)
    with pytest.raises(UserError, match=r"^s3://datasets/VeRi\.zip: not a readable zip file \(File is not a zip"):
        extract_archive(archive, tmp_path / "out", label="s3://datasets/VeRi.zip")


# --------------------------------------------------------------------------- S3 that never answers
@pytest.fixture()
def silent_endpoint():
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()
    for conn in held:
        conn.close()


@pytest.fixture()
def aws_env(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "ANET_S3_TIMEOUT_S", "ANET_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return monkeypatch


@pytest.mark.parametrize("target", ["endpoint", "s3://datasets/VeRi.zip"])
def test_a_silent_s3_endpoint_fails_within_the_configured_time(silent_endpoint, aws_env, target):
    aws_env.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    aws_env.setenv("ANET_S3_TIMEOUT_S", "1")
    url = silent_endpoint if target == "endpoint" else target
    started = time.monotonic()
    with pytest.raises(UserError, match=r"accepted the connection but did not answer within 1 s \(ANET_S3_TIMEOUT_S\)"):
        s3.check_endpoint(url)
    assert time.monotonic() - started < 5


def test_data_import_from_a_silent_s3_endpoint_is_one_line(silent_endpoint, aws_env, tmp_path, capsys):
    aws_env.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    aws_env.setenv("ANET_S3_TIMEOUT_S", "1")
    started = time.monotonic()
    status, err = _anet(["data", "import", "veri776", "s3://datasets/VeRi.zip", "--data-dir", str(tmp_path / "d"),
                         "--no-push"], capsys)
    assert status == 2 and len(err) == 1 and "did not answer within 1 s" in err[0]
    assert time.monotonic() - started < 5


def test_s3_timeouts_and_tries_come_from_the_environment(aws_env):
    config = s3.client("http://127.0.0.1:9")._client_config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (10.0, 10.0, 3)
    aws_env.setenv("ANET_S3_TIMEOUT_S", "2.5")
    aws_env.setenv("ANET_S3_MAX_ATTEMPTS", "5")
    config = s3.client("http://127.0.0.1:9")._client_config
    assert (config.connect_timeout, config.read_timeout, config.retries["total_max_attempts"]) == (2.5, 2.5, 5)
    for name, bad in (("ANET_S3_TIMEOUT_S", "soon"), ("ANET_S3_TIMEOUT_S", "inf"), ("ANET_S3_MAX_ATTEMPTS", "0")):
        aws_env.setenv(name, bad)
        with pytest.raises(UserError, match=rf"^{name}='{bad}': expected a positive"):
            s3.client("http://127.0.0.1:9")
        aws_env.delenv(name)


# --------------------------------------------------------------------------- every --out, pickled checkpoints
@pytest.mark.parametrize("command", ["evaluate", "index", "synth"])
def test_every_out_is_checked_before_any_work(tmp_path, capsys, command):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    argv = {"evaluate": ["evaluate", "--checkpoint", str(tmp_path / "file"), "--cache", str(tmp_path / "none")],
            "index": ["index", "--model", "models:/anet-smoke@champion", "--folder", str(tmp_path),
                      "--tracking-uri", "http://127.0.0.1:9"],  # nothing listens: reached only after the check
            "synth": ["data", "synth", "--profile", "smoke"]}[command]
    status, err = _anet([*argv, "--out", str(out)], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith(f"error: {out}: cannot be a folder") and "--out" in err[0]


def test_a_pickled_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    import argparse

    import torch

    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, pickled)  # loads only with weights_only=False
    status, err = _anet(["evaluate", "--checkpoint", str(pickled), "--cache", str(tmp_path), "--out",
                         str(tmp_path / "eval")], capsys)
    assert status == 2 and len(err) == 1 and err[0].startswith(f"error: {pickled}: a pickled checkpoint")
    assert "argparse.Namespace" in err[0] and "weights_only=False" not in err[0]
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02garbage")
    status, err = _anet(["evaluate", "--checkpoint", str(tmp_path / "garbage.pt"), "--cache", str(tmp_path),
                         "--out", str(tmp_path / "eval")], capsys)
    assert status == 2 and len(err) == 1 and "garbage.pt: not a readable anet checkpoint" in err[0]
