"""Training-recipe options of issue 20: upright initial orientation, cross-view warm-up, view-masking
anneal; each off by default (the official behaviour), each changing a run's name only when on."""
import pytest
import torch

from model.cross_view import CrossViewInteraction
from model.hamuco import HaMuCo
from model.losses import LossWeights, total_loss
from model.objective import HaMuCoObjective
from model.errors import HamucoError
from tasks.train import TrainModel


@pytest.mark.parametrize("orientation, fingers_down", [("identity", False), ("upright", True)])
def test_initial_orientation_of_both_pose_heads(orientation, fingers_down):
    torch.manual_seed(0)
    net = HaMuCo("resnet18", image_size=64, initial_orientation=orientation).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 3, 64, 64))
    for mesh in (out.single, out.fused):
        expected = torch.diag(torch.tensor([-1.0, -1.0, 1.0] if fingers_down else [1.0, 1.0, 1.0]))
        torch.testing.assert_close(mesh.rotmats[:, 0], expected.expand(2, 3, 3), atol=0.05, rtol=0)
        # camera frame: y points down the image; a raised hand has its fingertips above (smaller y) the wrist
        tip_minus_wrist = mesh.joints[:, 12, 1] - mesh.joints[:, 0, 1]
        assert bool((tip_minus_wrist < 0).all()) == fingers_down


def test_unknown_initial_orientation_is_refused():
    with pytest.raises(ValueError, match="initial orientation must be one of identity, upright"):
        HaMuCo("resnet18", image_size=64, initial_orientation="sideways")


def test_cross_view_warmup_ramps_consistency_and_distillation_only():
    terms = {"joint_2d/single": torch.tensor(1.0), "consistency": torch.tensor(2.0), "distillation": torch.tensor(4.0),
             "pose_prior/single": torch.tensor(100.0)}
    w = LossWeights(cross_view_warmup=10)
    assert [w.ramp(s) for s in (0, 5, 10, 50)] == [0.0, 0.5, 1.0, 1.0]
    assert float(total_loss(terms, w, step=0)) == pytest.approx(1.0 + 0.01 * 100)
    assert float(total_loss(terms, w, step=5)) == pytest.approx(1.0 + 0.5 * 6.0 + 1.0)
    assert float(total_loss(terms, w)) == float(total_loss(terms, LossWeights())) == pytest.approx(8.0)


def test_view_keep_probability_anneals_to_one():
    obj = HaMuCoObjective(view_keep_prob=0.5, view_keep_anneal_steps=100)
    assert [obj.keep_probability(s) for s in (0, 50, 100, 400)] == [0.5, 0.75, 1.0, 1.0]
    assert HaMuCoObjective().keep_probability(7) is None
    assert HaMuCoObjective(view_keep_prob=0.8).keep_probability(1000) == 0.8
    with pytest.raises(HamucoError, match="view_keep_prob must be in"):
        HaMuCoObjective(view_keep_prob=0.0)


def test_keep_probability_one_is_no_view_masking():
    torch.manual_seed(0)
    cv = CrossViewInteraction(16, num_layers=2, num_heads=4, dropout=0.0, view_keep_prob=0.5)
    g = torch.randn(2, 4 * 21, 16)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    reference = cv.eval()(g, mask).graph
    cv.train()
    torch.testing.assert_close(cv(g, mask, view_keep_prob=1.0).graph, reference)
    torch.manual_seed(1)
    assert not torch.allclose(cv(g, mask).graph, reference)  # the network's 0.5 masks views in training


def test_options_change_a_run_name_only_when_on(tmp_path):
    base = dict(dataset=str(tmp_path / "d.json"), out=str(tmp_path))
    plain = TrainModel(**base).run_dir
    assert TrainModel(**base, initial_orientation="identity", cross_view_warmup=0, view_keep_prob=0.5,
                      view_keep_anneal_steps=0, validate_every=7, val_samples=3, lr_schedule="cosine",
                      lr_warmup_steps=0, grad_clip=0.0).run_dir == plain
    names = {TrainModel(**base, **kw).run_dir for kw in (dict(initial_orientation="upright"),
                                                         dict(cross_view_warmup=100), dict(view_keep_prob=1.0),
                                                         dict(view_keep_anneal_steps=100), dict(lr_schedule="constant"),
                                                         dict(lr_schedule="warmup-cosine", lr_warmup_steps=50),
                                                         dict(grad_clip=1.0))}
    assert len(names) == 7 and plain not in names
    # a warm-up that is not inside the run is refused when the task is made, naming both options
    with pytest.raises(HamucoError, match="--lr-warmup-steps"):
        TrainModel(**base, lr_schedule="warmup-cosine", lr_warmup_steps=0)
    with pytest.raises(HamucoError, match="grad_clip"):
        TrainModel(**base, grad_clip=-1.0)


def test_procedural_hand_articulation_basis_spans_plausible_poses():
    import numpy as np

    from model.hand_model import HandModel
    from model.hand_pose import HandPoseSpace

    hand = HandModel(None)
    mean, comps = hand.articulation_basis(12)
    again_mean, again = hand.articulation_basis(12)
    assert torch.equal(comps, again) and torch.equal(mean, again_mean)  # the same basis on every run
    torch.testing.assert_close(comps @ comps.T, torch.eye(12, dtype=comps.dtype), atol=1e-8, rtol=0)
    # poses the basis never saw (another seed) are reconstructed far better with 12 components than with 2
    space = HandPoseSpace(hand.rest_joints().double().numpy())
    poses = torch.as_tensor(space.to_hand_pose(space.sample_wide(np.random.default_rng(7), 500)))

    def residual(k):
        m, c = hand.articulation_basis(k)
        centred = poses - m
        return float((centred - (centred @ c.T) @ c).norm(dim=1).mean() / centred.norm(dim=1).mean())
    assert residual(12) < 0.25 < residual(2)


def test_mano_file_components_are_used_as_they_are():
    from model.hand_model import HandModel

    hand = HandModel(None)
    q, _ = torch.linalg.qr(torch.randn(45, 45, dtype=torch.float64))
    hand.hands_components = q.T.numpy()  # what a MANO file with its own PCA holds
    _, comps = hand.articulation_basis(6)
    torch.testing.assert_close(comps, q.T[:6])


def test_pca_articulation_starts_at_the_mean_pose_and_trains_and_reloads(tiny_dataset, tmp_path):
    import luigi

    from model.inference import initial_network_of, load_model

    torch.manual_seed(0)
    net = HaMuCo("resnet18", image_size=64, articulation="pca", pca_components=8).eval()
    assert net.single_view.pose_head.last.out_features == 6 + 8 == net.pose_head.last.out_features
    with torch.no_grad():
        out = net(torch.randn(1, 2, 3, 64, 64))
    mean, _ = net.hand_model.articulation_basis(8)
    assert mean.abs().max() > 0.3  # the mean pose is a bent hand, far from the rest pose the "full" heads start at
    for mesh in (out.single, out.fused):
        torch.testing.assert_close(mesh.pose_axis_angle[:, 3:], mean.float().expand(2, 45), atol=0.05, rtol=0)
    task = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", steps=1, batch_size=1,
                      articulation="pca", pca_components=8, validate_every=0)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    model, info = load_model(task.output().path)
    assert info["architecture"]["articulation"] == "pca-8" and model.single_view.articulation.components == 8
    initial = initial_network_of(info)
    assert initial.single_view.articulation.mode == "pca"
    full = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", pca_components=8)
    assert full.run_dir == TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18").run_dir


def test_keypoint_input_single_view_reads_the_heads_joints_and_starts_from_a_2d_pretraining(tmp_path):
    from model.keypoints import load_keypoint_head
    from model.pretrain import KeypointNet

    torch.manual_seed(0)
    pretrained = KeypointNet("resnet18").eval()
    for p in pretrained.head.parameters():  # weights no fresh head would have
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"model": pretrained.state_dict(), "architecture": {"model": "KeypointNet"}}, tmp_path / "ckpt.pt")
    net = HaMuCo("resnet18", image_size=64, single_view_input="keypoints",
                 keypoint_head_weights=str(tmp_path / "ckpt.pt")).eval()
    for k, v in pretrained.head.state_dict().items():
        torch.testing.assert_close(net.single_view.keypoint_head.state_dict()[k], v)
    assert net.single_view.pose_head[0].in_features == 512 + 2 * 21  # GAP(H4) and the 21 joints' uv
    images = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        out = net(images)
        alone = pretrained.head.keypoints(net.single_view.backbone(images[0]))
    assert out.single.keypoints_2d.shape == (2, 21, 2)
    torch.testing.assert_close(out.single.keypoints_2d, alone)  # the head as the pretraining trained it
    # the heads read the joints: moving them moves the pose
    feats = net.single_view.backbone(images[0])
    gap = feats[-1].mean(dim=(2, 3))
    torch.nn.init.normal_(net.single_view.pose_head.last.weight, std=0.1)
    a = net.single_view.decode(gap, feats).pose6d
    net.single_view.keypoint_head.out.bias.data += torch.randn(21) * 3
    b = net.single_view.decode(gap, feats).pose6d
    assert not torch.allclose(a, b)
    # files that hold no head, or a head of other channels, are refused naming the file
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "nohead.pt")
    with pytest.raises(HamucoError, match="nohead.pt: holds no keypoint head"):
        HaMuCo("resnet18", image_size=64, single_view_input="keypoints", keypoint_head_weights=str(tmp_path / "nohead.pt"))
    from model.keypoints import HeatmapHead

    with pytest.raises(HamucoError, match="ckpt.pt: keypoint head weights do not match the backbone's channels"):
        load_keypoint_head(HeatmapHead((256, 512, 1024, 2048)), tmp_path / "ckpt.pt")  # a ResNet-50's head
    with pytest.raises(ValueError, match="single-view input must be one of gap, keypoints"):
        HaMuCo("resnet18", image_size=64, single_view_input="heatmaps")


def test_keypoint_input_trains_its_2d_term_and_reloads(tiny_dataset, tmp_path):
    import luigi

    from model.inference import initial_network_of, load_model
    from model.pretrain import KeypointNet
    from tasks.train import TrainModel

    torch.manual_seed(0)
    net = HaMuCo("resnet18", image_size=64, single_view_input="keypoints")
    batch = {"images": torch.randn(1, 3, 3, 64, 64), "keypoints": torch.rand(1, 3, 21, 2) * 64,
             "confidence": torch.ones(1, 3, 21), "view_mask": torch.tensor([[True, True, False]]),
             "extrinsics": torch.zeros(1, 3, 3, 4), "extrinsics_known": torch.zeros(1, 3, dtype=torch.bool)}
    terms = HaMuCoObjective()(net, batch, step=0)
    assert terms["joint_2d/keypoints"] > 0
    terms["joint_2d/keypoints"].backward()
    assert net.single_view.keypoint_head.out.weight.grad.abs().sum() > 0
    only = HaMuCoObjective(single_view_only=True)(net, batch, step=0)
    assert "joint_2d/keypoints" in only and "consistency" not in only
    assert "joint_2d/keypoints" not in HaMuCoObjective()(HaMuCo("resnet18", image_size=64), batch, step=0)

    torch.save({"model": KeypointNet("resnet18").state_dict()}, tmp_path / "pre.pt")
    task = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", steps=1, batch_size=1,
                      single_view_input="keypoints", keypoint_head_weights=str(tmp_path / "pre.pt"), validate_every=0)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    model, info = load_model(task.output().path)
    assert info["architecture"]["single_view_input"] == "keypoints" and model.single_view.keypoint_head is not None
    assert initial_network_of(info).single_view.keypoint_head is not None
    gap_run = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", single_view_input="gap")
    assert gap_run.run_dir == TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18").run_dir
    assert task.run_dir != TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", steps=1,
                                      batch_size=1, single_view_input="keypoints", validate_every=0).run_dir
    with pytest.raises(HamucoError, match="--keypoint-head-weights belongs to --single-view-input keypoints"):
        TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), keypoint_head_weights=str(tmp_path / "pre.pt")
                   ).check_parameters()
    with pytest.raises(HamucoError, match="missing.pt not found"):
        TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), single_view_input="keypoints",
                   keypoint_head_weights=str(tmp_path / "missing.pt")).check_parameters()


def test_joint_features_input_reads_the_backbone_at_the_heads_joints_trains_and_reloads(tiny_dataset, tmp_path):
    import luigi

    from model.graph_features import joint_feature_sampler
    from model.inference import initial_network_of, load_model
    from model.pretrain import KeypointNet
    from model.single_view import JOINT_FEATURE_DIM
    from tasks.train import TrainModel

    torch.manual_seed(0)
    net = HaMuCo("resnet18", image_size=64, single_view_input="joint_features").eval()
    sv = net.single_view
    # GAP(H4), the 21 joints' uv and 21 × 32 numbers from H1..H3 (64 + 128 + 256 channels) at those joints
    assert sv.pose_head[0].in_features == 512 + 2 * 21 + 21 * JOINT_FEATURE_DIM
    assert sv.joint_features[0].in_features == 64 + 128 + 256
    torch.nn.init.normal_(sv.pose_head.last.weight, std=0.1)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = sv.backbone(images)
        gap = feats[-1].mean(dim=(2, 3))
        out = sv.decode(gap, feats)
        # the same input built by hand: what the heads read is the sampler's output at the head's joints
        kp = sv.keypoint_head.keypoints(feats)
        x = torch.cat([gap, kp.flatten(1), sv.joint_features(joint_feature_sampler(feats[:3], kp)).flatten(1)], 1)
        torch.testing.assert_close(out.pose6d, sv.articulation(sv.pose_head(x)))
        # H1, which the sampler reads, moves the pose
        moved = sv.decode(gap, (feats[0] + 1.0,) + tuple(feats[1:])).pose6d
    assert not torch.allclose(moved, out.pose6d)
    # the joint-feature MLP learns from the single view's losses
    batch = {"images": torch.randn(1, 3, 3, 64, 64), "keypoints": torch.rand(1, 3, 21, 2) * 64,
             "confidence": torch.ones(1, 3, 21), "view_mask": torch.tensor([[True, True, False]]),
             "extrinsics": torch.zeros(1, 3, 3, 4), "extrinsics_known": torch.zeros(1, 3, dtype=torch.bool)}
    net.train()
    terms = HaMuCoObjective()(net, batch, step=0)
    assert "joint_2d/keypoints" in terms
    terms["total"].backward()
    assert sv.joint_features[0].weight.grad.abs().sum() > 0
    # through the task: a 2D pretraining's head starts it, the checkpoint rebuilds the same network
    pre = KeypointNet("resnet18")
    torch.save({"model": pre.state_dict()}, tmp_path / "pre.pt")
    task = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", steps=1, batch_size=1,
                      single_view_input="joint_features", keypoint_head_weights=str(tmp_path / "pre.pt"),
                      validate_every=0)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    model, info = load_model(task.output().path)
    assert info["architecture"]["single_view_input"] == "joint_features"
    assert model.single_view.joint_features is not None
    assert initial_network_of(info).single_view.joint_features is not None
    keypoint_run = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path), backbone="resnet18", steps=1, batch_size=1,
                              single_view_input="keypoints", keypoint_head_weights=str(tmp_path / "pre.pt"),
                              validate_every=0)
    assert keypoint_run.run_dir != task.run_dir
    with pytest.raises(ValueError, match="must be one of gap, keypoints, joint_features"):
        HaMuCo("resnet18", image_size=64, single_view_input="heatmaps")
