"""Pretrained weights pre-flight: local / http / s3 sources, hash check, offline message, cache reuse.

No test touches the network: URLs point at an http.server on 127.0.0.1, S3 at moto.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from anet.config import ModelCfg
from anet.errors import UserError
from anet.mlops.storage.pretrained import (
    IBN_NET_R50_URL,
    PINNED_SHA256,
    PretrainedWeights,
    cache_path,
    pretrained_tags,
    resolve_model_weights,
    resolve_pretrained,
)
from anet.model import build_backbone, load_backbone_weights

try:  # tests/ is not a package: plain `pytest` puts tests/ on sys.path, `python -m pytest` also the root
    from s3_server import free_port, moto_server, s3_env
except ImportError:  # pragma: no cover
    from tests.s3_server import free_port, moto_server, s3_env


def _weights_file(folder: Path, name: str | None = None) -> tuple[Path, dict[str, torch.Tensor]]:
    """A ResNet-18-IBN-a state dict with random values (plus an ImageNet fc), saved as ``name``;
    ``name`` may hold ``{hash}``, replaced by the first 8 hex digits of the file's sha256."""
    torch.manual_seed(0)
    net = build_backbone(18, ibn=True)
    for p in net.state_dict().values():
        if p.is_floating_point():
            torch.nn.init.normal_(p)
    ref = net.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "staging.pth"
    torch.save(ref | {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / (name or "r18_ibn_a-{hash}.pth").format(hash=digest[:8])
    tmp.rename(path)
    return path, ref


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@contextlib.contextmanager
def _http_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 in a thread; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _assert_backbone_has(ref: dict[str, torch.Tensor], weights: PretrainedWeights) -> None:
    net = build_backbone(18, ibn=True)
    ignored = load_backbone_weights(net, weights.path)
    assert set(ignored) == {"fc.weight", "fc.bias"}
    for key, value in net.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_none_means_from_scratch():
    assert resolve_pretrained(None) is None and resolve_pretrained("none") is None
    assert resolve_pretrained(" None ") is None and resolve_pretrained("") is None
    assert pretrained_tags(None) == {"pretrained.source": "none", "pretrained.sha256": "",
                                     "pretrained.sha256_check": "none"}
    assert ModelCfg(pretrained="none").pretrained is None and ModelCfg(pretrained=" None").pretrained is None


def test_local_path_is_used_in_place_and_lands_in_the_backbone(tmp_path):
    path, ref = _weights_file(tmp_path / "w")
    for source in (str(path), path.as_uri()):
        weights = resolve_pretrained(source, cache_dir=tmp_path / "cache")
        assert weights.path == path and weights.source == source
        assert weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        _assert_backbone_has(ref, weights)
    assert not (tmp_path / "cache").exists()
    assert pretrained_tags(weights) == {"pretrained.source": path.as_uri(), "pretrained.sha256": weights.sha256,
                                        "pretrained.sha256_check": "file name"}
    with pytest.raises(UserError, match="nothere.pth: no such weights file"):
        resolve_pretrained(str(tmp_path / "nothere.pth"))


def test_url_is_downloaded_once_verified_and_reused_offline(tmp_path, caplog):
    served, ref = _weights_file(tmp_path / "www" / "v1.0")
    cache = tmp_path / "cache"
    with _http_server(tmp_path / "www") as base, caplog.at_level("INFO", logger="anet.mlops.storage.pretrained"):
        url = f"{base}/v1.0/{served.name}"
        weights = resolve_pretrained(url, cache_dir=cache)
    assert weights.path == cache_path(url, cache) and weights.path.read_bytes() == served.read_bytes()
    assert weights.path.is_relative_to(cache) and weights.path.name == served.name
    assert weights.sha256.startswith(served.stem.rsplit("-", 1)[1])
    assert any("downloaded" in r.getMessage() for r in caplog.records)  # log lines when not on a TTY
    assert [p.name for p in weights.path.parent.iterdir()] == [served.name]  # no temp file left behind
    _assert_backbone_has(ref, weights)
    again = resolve_pretrained(url, cache_dir=cache)  # the server is gone: only the cache can answer
    assert again == weights


def test_hash_mismatch_names_the_url_and_both_hashes(tmp_path):
    served, _ = _weights_file(tmp_path / "www", name="r18_ibn_a-deadbeef.pth")
    actual = hashlib.sha256(served.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with _http_server(tmp_path / "www") as base, pytest.raises(UserError) as err:
        resolve_pretrained(f"{base}/{served.name}", cache_dir=cache)
    msg = str(err.value)
    assert f"{base}/{served.name}" in msg and "deadbeef" in msg and actual in msg and "\n" not in msg
    assert not any(p.is_file() for p in cache.rglob("*"))  # nothing wrong is ever cached


def test_wrong_file_put_by_hand_at_the_cache_path_is_refused_without_network(tmp_path):
    target = cache_path(IBN_NET_R50_URL, tmp_path)
    assert target == tmp_path.joinpath("github.com", "XingangPan", "IBN-Net", "releases", "download", "v1.0",
                                       "resnet50_ibn_a-d9d0bb7b.pth")
    path, _ = _weights_file(target.parent)
    path.rename(target)
    with pytest.raises(UserError, match=r"resnet50_ibn_a-d9d0bb7b\.pth: sha256 mismatch: expected d9d0bb7b"):
        resolve_pretrained(IBN_NET_R50_URL, cache_dir=tmp_path)


def test_offline_without_cache_says_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1.0/resnet50_ibn_a-d9d0bb7b.pth"  # nobody listens there
    with pytest.raises(UserError) as err:
        resolve_pretrained(url, cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert msg.startswith(f"{url}: could not be reached") and "\n" not in msg
    assert f"put it at {cache_path(url, tmp_path / 'cache')} " in msg
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_unreachable_s3_says_where_to_put_the_file(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with s3_env(dead), pytest.raises(UserError) as err:
        resolve_pretrained("s3://models/r18.pth", cache_dir=tmp_path)
    msg = str(err.value)
    assert "s3://models/r18.pth" in msg and "unreachable" in msg and "\n" not in msg
    assert f"put it at {tmp_path / 's3' / 'models' / 'r18.pth'} " in msg


@pytest.mark.integration
def test_s3_object_is_downloaded_once_and_lands_in_the_backbone(tmp_path):
    import boto3

    path, ref = _weights_file(tmp_path / "w")
    uri = f"s3://models/ibn/{path.name}"
    with moto_server() as endpoint, s3_env(endpoint):
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(path), "models", f"ibn/{path.name}")
        weights = resolve_pretrained(uri, cache_dir=tmp_path / "cache")
    assert weights.path == tmp_path / "cache" / "s3" / "models" / "ibn" / path.name
    assert weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    _assert_backbone_has(ref, weights)
    with s3_env(f"http://127.0.0.1:{free_port()}"):  # endpoint gone: the cached copy answers
        assert resolve_pretrained(uri, cache_dir=tmp_path / "cache") == weights


def _release_named(folder: Path) -> tuple[Path, str]:
    """Another file saved under the IBN-Net release's name; returns it and its real sha256."""
    path, _ = _weights_file(folder)
    target = path.with_name(IBN_NET_R50_URL.rsplit("/", 1)[1])
    path.rename(target)
    return target, hashlib.sha256(target.read_bytes()).hexdigest()


def test_local_file_with_the_release_name_but_another_hash_is_refused_in_one_line(tmp_path):
    path, actual = _release_named(tmp_path / "w")
    pinned = PINNED_SHA256[path.name]
    assert not actual.startswith(pinned)
    with pytest.raises(UserError) as err:
        resolve_pretrained(str(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}: sha256 mismatch: expected {pinned}... (pinned), the local file {path} has {actual}")
    assert f"model.pretrained_sha256={actual}" in msg and "\n" not in msg
    renamed, _ = _weights_file(tmp_path / "x", name="mine-0123abcd.pth")  # torch.hub-style tag: checked too
    with pytest.raises(UserError, match=r"expected 0123abcd\.\.\. \(file name\)"):
        resolve_pretrained(str(renamed))


def test_pretrained_sha256_names_another_file_and_is_then_the_only_check(tmp_path):
    path, actual = _release_named(tmp_path / "w")
    cfg = ModelCfg(depth=18, pretrained=str(path), pretrained_sha256=actual)
    weights = resolve_model_weights(cfg)
    assert weights is not None and weights.sha256 == actual and weights.path == path
    assert pretrained_tags(weights) == {"pretrained.source": str(path), "pretrained.sha256": actual,
                                        "pretrained.sha256_check": "model.pretrained_sha256"}
    target = cache_path(IBN_NET_R50_URL, tmp_path / "cache")  # a cached copy: accepted without network
    target.parent.mkdir(parents=True)
    target.write_bytes(path.read_bytes())
    assert resolve_pretrained(IBN_NET_R50_URL, tmp_path / "cache", sha256=actual).path == target
    other = "0" * 64
    with pytest.raises(UserError) as err:
        resolve_pretrained(IBN_NET_R50_URL, tmp_path / "cache", sha256=other)
    msg = str(err.value)
    assert f"expected {other} (model.pretrained_sha256), the cached file {target} has {actual}" in msg
    assert "\n" not in msg
    with pytest.raises(ValueError, match="pretrained_sha256"):
        ModelCfg(pretrained_sha256="d9d0bb7b")  # the full digest, or nothing


def test_downloaded_file_is_checked_against_the_override(tmp_path):
    served, _ = _weights_file(tmp_path / "www", name="r18_ibn_a-deadbeef.pth")  # wrong tag in the name
    actual = hashlib.sha256(served.read_bytes()).hexdigest()
    with _http_server(tmp_path / "www") as base:
        weights = resolve_pretrained(f"{base}/{served.name}", tmp_path / "cache", sha256=actual)
    assert weights.sha256 == actual and weights.checked_against == "model.pretrained_sha256"


def test_run_stage_refuses_to_ignore_the_configured_weights(tmp_path):
    from anet.config import load_config
    from anet.train.stage import run_stage

    path, _ = _weights_file(tmp_path / "w")
    cfg = load_config("smoke", [f"model.pretrained={path}"])
    with pytest.raises(UserError, match=r"^model\.pretrained=.* names backbone weights but none were passed"):
        run_stage(cfg, tmp_path / "no-cache", "stage_one", tmp_path / "out")
    with pytest.raises(UserError, match="model.pretrained is none"):
        run_stage(load_config("smoke"), tmp_path / "no-cache", "stage_one", tmp_path / "out", pretrained=path)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_train_step_logs_the_configured_weights_source_and_hash(tmp_path, monkeypatch):
    import mlflow

    from anet import steps
    from anet.config import resolve_config

    path, _ = _weights_file(tmp_path / "w")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = resolve_config("smoke", data_root=str(tmp_path / "data"), cache_root=str(tmp_path / "cache"),
                         overrides={"model.pretrained": str(path)})
    prep = steps.prepare_data(str(tmp_path / "prep"), config_json=cfg.to_json(), open_parent_run=True)
    result = steps.train(prep["config_json"], str(tmp_path / "prep"), "stage_one", str(tmp_path / "one"),
                         parent_run_id=prep["parent_run_id"])
    ckpt = torch.load(result["checkpoint"], weights_only=True)
    assert ckpt["provenance"]["pretrained.sha256"] == digest
    runs = mlflow.search_runs(experiment_ids=[mlflow.get_run(prep["parent_run_id"]).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{prep['parent_run_id']}'",
                              output_format="list")
    params = next(r.data.params for r in runs if "pretrained.source" in r.data.params)
    assert params["pretrained.source"] == str(path) and params["pretrained.sha256"] == digest
    assert params["pretrained.sha256_check"] == "file name"
