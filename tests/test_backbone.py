"""ResNet-IBN-a backbone: shapes, IBN-Net/FastReID key layout, weight loading and its errors."""

from __future__ import annotations

import pytest
import torch

from anet.config import ModelCfg
from anet.errors import UserError
from anet.model import build_backbone, build_model, load_backbone_weights
from anet.model.backbone import IBN

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("depth", "ibn", "last_stride", "size", "channels"),
    [(18, True, 1, 64, 512), (18, False, 2, 64, 512), (34, True, 1, 32, 512),
     (50, True, 1, 64, 2048), (101, False, 2, 32, 2048)],
)
def test_feature_map_shape(depth: int, ibn: bool, last_stride: int, size: int, channels: int) -> None:
    net = build_backbone(depth, ibn=ibn, last_stride=last_stride)
    f_map = net(torch.randn(2, 3, size, size))
    side = size // (16 if last_stride == 1 else 32)
    assert net.out_channels == channels
    assert f_map.shape == (2, channels, side, side)


def _expected_keys(depth: int, ibn: bool) -> set[str]:
    """The documented IBN-Net / FastReID layout, written out independently of the module code."""
    blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    bottleneck = depth >= 50
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn}
    for layer, n in enumerate(blocks, start=1):
        for j in range(n):
            p = f"layer{layer}.{j}."
            convs = (1, 2, 3) if bottleneck else (1, 2)
            keys |= {f"{p}conv{c}.weight" for c in convs}
            keys |= {f"{p}bn{c}.{s}" for c in convs[1:] for s in bn}
            if ibn and layer <= 3:
                keys |= {f"{p}bn1.IN.weight", f"{p}bn1.IN.bias"} | {f"{p}bn1.BN.{s}" for s in bn}
            else:
                keys |= {f"{p}bn1.{s}" for s in bn}
            if j == 0 and (layer > 1 or bottleneck):
                keys |= {f"{p}downsample.0.weight"} | {f"{p}downsample.1.{s}" for s in bn}
    return keys


@pytest.mark.parametrize(("depth", "ibn"), [(18, True), (34, False), (50, True), (101, True)])
def test_state_dict_keys_match_ibn_net_layout(depth: int, ibn: bool) -> None:
    keys = set(build_backbone(depth, ibn=ibn).state_dict())
    assert keys == _expected_keys(depth, ibn)


def test_ibn_a_spot_checks() -> None:
    state = build_backbone(50, ibn=True).state_dict()
    assert state["layer1.0.bn1.IN.weight"].shape == (32,)  # int(64 / 2) channels through InstanceNorm
    assert state["layer1.0.bn1.BN.running_mean"].shape == (32,)
    assert state["layer3.5.bn1.IN.bias"].shape == (128,)
    assert "layer4.0.bn1.weight" in state and "layer4.0.bn1.IN.weight" not in state
    assert "layer1.0.downsample.1.running_var" in state and not any(k.startswith("fc.") for k in state)
    basic = build_backbone(18, ibn=True).state_dict()
    assert "layer1.0.bn1.IN.weight" in basic and "layer4.1.bn1.weight" in basic


def test_ibn_splits_instance_and_batch_norm() -> None:
    ibn = IBN(6).eval()
    x = torch.randn(2, 6, 5, 5)
    out = ibn(x)
    ref_in = torch.nn.functional.instance_norm(x[:, :3], eps=1e-5)
    torch.testing.assert_close(out[:, :3], ref_in)
    torch.testing.assert_close(out[:, 3:], x[:, 3:] / (1 + 1e-5) ** 0.5)  # BN at init running stats


def _ibn_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    net = build_backbone(18, ibn=True)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    return net.state_dict()


def _assert_loaded(net: torch.nn.Module, ref: dict[str, torch.Tensor]) -> None:
    for key, value in net.state_dict().items():
        assert torch.equal(value, ref[key]), key


@pytest.mark.parametrize("layout", ["plain", "state_dict_module", "fastreid_model", "file_url"])
def test_load_ibn_net_layouts(tmp_path, layout: str) -> None:
    ref = _ibn_weights()
    extra = {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    match layout:
        case "plain" | "file_url":
            obj: object = ref | extra
        case "state_dict_module":
            no_counters = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
            obj = {"state_dict": {f"module.{k}": v for k, v in (no_counters | extra).items()}, "epoch": 3}
        case _:
            obj = {"model": {f"backbone.{k}": v for k, v in ref.items()} | {"heads.weight": torch.zeros(5, 2)},
                   "iteration": 10}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    net = build_backbone(18, ibn=True)
    ignored = load_backbone_weights(net, path.as_uri() if layout == "file_url" else str(path))
    _assert_loaded(net, ref)
    assert set(ignored) <= {"fc.weight", "fc.bias", "heads.weight"} and ignored


def test_plain_resnet_weights_into_ibn_model_are_explained(tmp_path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(build_backbone(18, ibn=False).state_dict(), path)
    with pytest.raises(UserError) as err:
        load_backbone_weights(build_backbone(18, ibn=True), path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "plain ResNet keys (layer1.0.bn1.weight) but the model is IBN-a" in msg
    assert "set model.ibn=false or use IBN-Net weights" in msg


def test_depth_mismatch_is_explained(tmp_path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(build_backbone(34, ibn=True).state_dict(), path)
    with pytest.raises(UserError, match="model.depth"):
        load_backbone_weights(build_backbone(18, ibn=True), path)


def test_unreadable_or_missing_file_names_the_path(tmp_path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="broken.pth"):
        load_backbone_weights(build_backbone(18), bad)
    with pytest.raises(UserError, match="nothere.pth"):
        load_backbone_weights(build_backbone(18), tmp_path / "nothere.pth")
    no_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 1}, no_tensors)
    with pytest.raises(UserError, match="no state dict"):
        load_backbone_weights(build_backbone(18), no_tensors)


def test_build_model_loads_pretrained(tmp_path) -> None:
    ref = _ibn_weights()
    path = tmp_path / "r18_ibn_a.pth"
    torch.save(ref, path)
    model = build_model(ModelCfg(variant="baseline", depth=18), num_ids=3, attr_classes={}, pretrained=path)
    _assert_loaded(model.backbone, ref)
