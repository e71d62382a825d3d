"""The HaMuCo networks: Table A's shapes, channel counts, view masking, gradients, weight loading."""
from pathlib import Path

import pytest
import torch
import torchvision

from model.backbone import Backbone, imagenet_weights_file
from model.errors import HamucoError
from model.graph_features import joint_feature_sampler
from model.hamuco import HaMuCo
from model.single_view import INIT_SCALE
from model.rotations import axis_angle_to_matrix


@pytest.fixture(scope="module")
def resnet18_net():
    torch.manual_seed(0)
    return HaMuCo("resnet18", "none").eval()


def test_table_a_shapes_resnet50():
    torch.manual_seed(0)
    net = HaMuCo("resnet50", backbone_weights="none").eval()
    nv = net.hand_model.num_vertices
    with torch.no_grad():
        out = net(torch.randn(1, 8, 3, 256, 256), torch.ones(1, 8, dtype=torch.bool), trace=True)
    s, f, g, t = out.single, out.fused, out.graph, out.trace
    assert [tuple(h.shape) for h in s.features] == [
        (8, 256, 64, 64), (8, 512, 32, 32), (8, 1024, 16, 16), (8, 2048, 8, 8)]
    assert s.gap.shape == (8, 2048)
    assert s.pose_axis_angle.shape == (8, 48)  # θ (Table A's axis-angle form of the 16×6 output)
    assert s.pose6d.shape == (8, 16, 6)
    assert s.betas.shape == (8, 10)
    assert s.cam.shape == (8, 3)  # s, t
    assert s.vertices.shape == (8, nv, 3)  # M
    assert s.joints.shape == (8, 21, 3)  # P
    assert g.le.shape == (8, 21, 64)  # G1
    assert g.saigb.shape == (8, 21, 512)  # G2
    assert g.jfs.shape == (8, 21, 1792)  # G3
    assert g.concat.shape == (8, 21, 2368)
    assert t["G"].reshape(-1, 2368).shape == (168, 2368)
    for i in (1, 2):
        for key in ("cva", "vsf", "layer"):
            assert t[f"{key}_{i}"].reshape(-1, 2368).shape == (168, 2368)
    assert t["G_star"].reshape(-1, 2368).shape == (168, 2368)
    assert t["regression"].reshape(-1, 32).shape == (168, 32)
    assert t["regression_flat"].shape == (8, 672)
    assert f.pose_axis_angle.shape == (8, 48)  # θ*
    assert f.cam.shape == (8, 3)  # s*, t*
    assert f.vertices.shape == (8, nv, 3)  # M*
    assert f.joints.shape == (8, 21, 3)  # P*
    assert torch.equal(f.betas, s.betas)  # β* = β
    # the axis-angle form encodes the same rotations as the 6D output
    assert torch.allclose(axis_angle_to_matrix(s.pose_axis_angle.view(8, 16, 3)), s.rotmats, atol=1e-5)
    assert torch.allclose(axis_angle_to_matrix(f.pose_axis_angle.view(8, 16, 3)), f.rotmats, atol=1e-5)
    assert (s.cam[:, 0] >= 0).all() and (f.cam[:, 0] >= 0).all()
    for x in (s.vertices, s.joints_2d, f.vertices, f.joints_2d):
        assert torch.isfinite(x).all()
    assert torch.allclose(s.joints[:, 9], torch.zeros(8, 3), atol=1e-6)  # root-relative at joint 9


def test_resnet18_channel_counts(resnet18_net):
    assert resnet18_net.single_view.backbone.channels == (64, 128, 256, 512)
    assert resnet18_net.token_dim == 1024
    with torch.no_grad():
        out = resnet18_net(torch.randn(1, 2, 3, 256, 256), trace=True)
    assert out.graph.jfs.shape == (2, 21, 448)
    assert out.graph.saigb.shape == (2, 21, 512)
    assert out.graph.concat.shape == (2, 21, 1024)
    assert out.trace["G"].shape == (1, 42, 1024)


def test_masked_view_has_no_influence(resnet18_net):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 3, 256, 256)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        a = resnet18_net(images, mask)
        changed = images.clone()
        changed[0, 1] = torch.randn(3, 256, 256) * 3
        b = resnet18_net(changed, mask)
        changed_valid = images.clone()
        changed_valid[0, 2] = torch.randn(3, 256, 256) * 3
        c = resnet18_net(changed_valid, mask)
    for out in (a, b):
        for x in (out.single.joints, out.fused.joints, out.fused.vertices, out.fused.joints_2d):
            assert torch.isfinite(x).all()
    fa, fb, fc = (o.fused.joints.view(2, 3, 21, 3) for o in (a, b, c))
    assert torch.equal(fa[0, [0, 2]], fb[0, [0, 2]])  # group 0's valid views: untouched
    assert torch.equal(fa[1], fb[1])  # the other group: untouched
    # a valid view does talk to the others (cross-view interaction is live)
    assert not torch.allclose(fa[0, 0], fc[0, 0])
    assert torch.equal(fa[1], fc[1])


def test_gradients_reach_backbone():
    torch.manual_seed(0)
    net = HaMuCo("resnet18", "none", image_size=64).train()
    out = net(torch.randn(2, 2, 3, 64, 64), torch.tensor([[True, True], [True, False]]))
    loss = out.fused.joints_2d.abs().mean() + out.single.joints_2d.abs().mean() + out.fused.joints.abs().mean()
    loss.backward()
    for p in (net.single_view.backbone.conv1.weight, net.single_view.backbone.layer4[-1].conv2.weight,
              net.cross_view.cva[0].attn.in_proj_weight, net.cross_view.vsf[1].gc2.adjacency,
              net.graph_features.saigb.conv.weight, net.graph_features.le.mlp[0].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_initial_prediction_near_identity():
    """Heads start at the identity pose, scale INIT_SCALE, no translation (features normalised by BN)."""
    torch.manual_seed(0)
    net = HaMuCo("resnet18", "none", image_size=64).train()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 3, 64, 64))
    for mesh in (out.single, out.fused):
        assert mesh.pose_axis_angle.abs().max() < 0.1
        assert torch.allclose(mesh.cam, torch.tensor([INIT_SCALE, 0.0, 0.0]).expand(6, 3), atol=0.1)
    assert out.single.betas.abs().max() < 0.1


def test_joint_feature_sampler_corners():
    fmap = torch.arange(16.0).view(1, 1, 4, 4)
    uv = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]], requires_grad=True)
    sampled = joint_feature_sampler([fmap, fmap * 2], uv)
    assert sampled.shape == (1, 4, 2)
    assert sampled[0, :, 0].tolist() == [0.0, 3.0, 12.0, 15.0]  # align_corners=True
    assert not sampled.requires_grad  # joints detached, map has no grad


def test_wrong_image_size_is_refused(resnet18_net):
    with pytest.raises(HamucoError, match="256"):
        resnet18_net(torch.randn(1, 1, 3, 128, 128))


def test_missing_weights_file_names_path():
    with pytest.raises(HamucoError, match="/nonexistent.pth"):
        HaMuCo("resnet18", backbone_weights="/nonexistent.pth")


def test_weights_file_strict_loading(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    good = tmp_path / "r18.pth"
    torch.save(state, good)
    bb = Backbone("resnet18", good)
    assert torch.equal(bb.conv1.weight, state["conv1.weight"])
    del state["layer2.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(HamucoError, match=r"layer2\.0\.conv1\.weight.*extra\.weight"):
        Backbone("resnet18", bad)


def test_imagenet_without_network_names_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, cache = imagenet_weights_file("resnet18")
    assert cache == Path(tmp_path) / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(HamucoError) as err:
        Backbone("resnet18", "imagenet")
    msg = str(err.value)
    assert str(cache) in msg and "backbone_weights=PATH" in msg and "backbone_weights=none" in msg
    assert url in msg


def test_camera_scale_stays_positive_and_recoverable():
    """A raw scale pushed far down still gives s > MIN_SCALE (projections keep the hand's structure) and
    a gradient (a ReLU would give s = 0 and no gradient: projections collapsed to a point for good)."""
    from model.single_view import INIT_SCALE, MIN_SCALE, MLP, camera_from_raw, init_cam_head

    raw = torch.tensor([[-8.0, 0.1, -0.2], [0.5, 0.0, 0.0]], requires_grad=True)
    cam = camera_from_raw(raw)
    assert torch.all(cam[:, 0] > MIN_SCALE) and torch.equal(cam[:, 1:], raw[:, 1:])
    cam[:, 0].sum().backward()
    assert torch.all(raw.grad[:, 0] > 0)
    head = MLP(8, 3)
    init_cam_head(head)
    s = camera_from_raw(head(torch.zeros(1, 8)))[0, 0]
    assert abs(float(s.detach()) - INIT_SCALE) < 1e-3
