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
                      view_keep_anneal_steps=0, validate_every=7, val_samples=3).run_dir == plain
    names = {TrainModel(**base, **kw).run_dir for kw in (dict(initial_orientation="upright"),
                                                         dict(cross_view_warmup=100), dict(view_keep_prob=1.0),
                                                         dict(view_keep_anneal_steps=100))}
    assert len(names) == 4 and plain not in names
