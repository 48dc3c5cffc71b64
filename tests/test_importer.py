"""Dataset import: safe archive extraction, layout check before the move, DVC add/push/pull, S3 errors."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from anet.data.archive import extract_archive
from anet.errors import UserError
from anet.mlops.storage.importer import dvc, import_dataset

try:  # tests/ is not a package: plain `pytest` puts tests/ on sys.path, `python -m pytest` also the root
    from s3_server import free_port, moto_server, s3_env
except ImportError:  # pragma: no cover
    from tests.s3_server import free_port, moto_server, s3_env


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        good = tarfile.TarInfo("ok/file.txt")
        good.size = 1
        tf.addfile(good, io.BytesIO(b"y"))
        tf.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(("member", "message"), [
    (_member("../x"), "contains '..'"),
    (_member("a/../../x"), "contains '..'"),
    (_member("/abs/x"), "absolute path"),
    (_member("ok/link", tarfile.SYMTYPE, "../../etc/passwd"), "links outside"),
    (_member("ok/hard", tarfile.LNKTYPE, "/etc/passwd"), "links outside"),
    (_member("ok/dev", tarfile.CHRTYPE), "device"),
])
def test_tar_extraction_refuses_unsafe_members(tmp_path, member, message):
    archive = _tar_with(tmp_path / "bad.tar.gz", member)
    with pytest.raises(UserError, match=message) as err:
        extract_archive(archive, tmp_path / "out")
    assert repr(member.name) in str(err.value)
    assert not (tmp_path / "out" / "ok").exists()  # checked before anything is written


@pytest.mark.parametrize(("name", "message"), [("../x", "contains '..'"), ("/abs/x", "absolute path"),
                                               ("C:\\win\\x", "absolute path")])
def test_zip_extraction_refuses_unsafe_members(tmp_path, name, message):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/file.txt", "y")
        zf.writestr(zipfile.ZipInfo(name), "x")
    with pytest.raises(UserError, match=message):
        extract_archive(archive, tmp_path / "out")


def _fake_veri(root: Path) -> Path:
    from anet.config import SyntheticCfg
    from anet.synthetic.generator import render_dataset
    from anet.synthetic.layouts import write_veri776

    cfg = SyntheticCfg(train_ids=4, test_ids=2, images_per_id=2, cameras=2, render_size=32)
    return Path(write_veri776(render_dataset(cfg), root))


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _repo(path: Path, remote_url: str, endpoint: str | None = None) -> Path:
    """git init + dvc init + a default remote (written directly: each dvc call costs ~1 s)."""
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc(path, "init", "-q")
    extra = f"    endpointurl = {endpoint}\n" if endpoint else ""
    with open(path / ".dvc" / "config", "a") as fh:
        fh.write(f"[core]\n    remote = store\n['remote \"store\"']\n    url = {remote_url}\n{extra}")
    return path


@pytest.mark.integration  # runs dvc in subprocesses (~10 s)
def test_local_archive_import_dvc_add_and_local_remote_push(tmp_path):
    src = _fake_veri(tmp_path / "src" / "VeRi")
    archive = tmp_path / "VeRi.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src, arcname="VeRi")  # one top-level folder, as the real archive has
    repo = _repo(tmp_path / "repo", str(tmp_path / "remote"))
    summary = import_dataset("veri776", str(archive), repo / "data", push=True, progress=False)
    from anet.data.readers import read_dataset

    assert summary["dvc"] == "added" and summary["pushed"]
    assert summary["rows"] == len(read_dataset("veri776", src).frame)
    assert _digests(repo / "data" / "veri776") == _digests(src)
    assert (repo / "data.dvc").is_file() and (tmp_path / "remote" / "files" / "md5").is_dir()
    assert [p.name for p in (repo / "data").iterdir()] == ["veri776"]  # no staging debris
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        import_dataset("veri776", str(src), repo / "data", push=False, progress=False)


def test_bad_layout_is_refused_before_the_move(tmp_path):
    src = tmp_path / "notveri"
    (src / "image_train").mkdir(parents=True)
    (src / "readme.txt").write_text("hello")
    with pytest.raises(UserError):
        import_dataset("veri776", str(src), tmp_path / "data", push=False, progress=False)
    assert list((tmp_path / "data").iterdir()) == []
    with pytest.raises(UserError, match="no such file or folder"):
        import_dataset("veri776", str(tmp_path / "missing"), tmp_path / "data", push=False, progress=False)


def test_missing_credentials_and_unreachable_endpoint_are_one_line_errors():
    from anet.mlops.storage.s3 import check_endpoint

    dead = f"http://127.0.0.1:{free_port()}"
    with s3_env(dead, keys=False), pytest.raises(UserError) as err:
        check_endpoint("s3://bucket/VeRi.zip")
    assert "s3://bucket/VeRi.zip" in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)
    with s3_env(dead), pytest.raises(UserError) as err:
        check_endpoint(None)
    assert dead in str(err.value) and "unreachable" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.integration
def test_s3_import_push_delete_pull_round_trip(tmp_path):
    import boto3

    from anet.mlops.storage.s3 import check_endpoint, upload_file

    src = _fake_veri(tmp_path / "src" / "VeRi")
    archive = shutil.make_archive(str(tmp_path / "VeRi"), "zip", tmp_path / "src")
    with moto_server() as endpoint, s3_env(endpoint):
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="datasets")
        s3.create_bucket(Bucket="dvc-store")
        upload_file(archive, "s3://datasets/VeRi.zip", progress=False)
        for path in src.rglob("*"):  # the same tree as a prefix
            if path.is_file():
                s3.upload_file(str(path), "datasets", f"prefix/veri/{path.relative_to(src)}")
        check_endpoint(endpoint)
        with pytest.raises(UserError, match="not found"):
            check_endpoint("s3://no-such-bucket/x.zip")
        repo = _repo(tmp_path / "repo", "s3://dvc-store/store", endpoint)
        summary = import_dataset("veri776", "s3://datasets/VeRi.zip", repo / "data", progress=False)
        assert summary["pushed"] and _digests(repo / "data" / "veri776") == _digests(src)
        import_dataset("veri776", "s3://datasets/prefix/veri/", repo / "data", push=True, progress=False,
                       overwrite=True)
        before = _digests(repo / "data")
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(repo / "data")
        dvc(repo, "pull")
        assert _digests(repo / "data") == before and before
