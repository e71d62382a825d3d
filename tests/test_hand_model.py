"""The procedural hand and the MANO-format hand model (smplx), right and left."""
from collections import Counter

import numpy as np
import pytest
import torch

from model.hand_model import (MIRROR, OPENPOSE_FROM_MANO, OPENPOSE_PARENTS, ROOT_JOINT, HandModel,
                              mirror_axis_angle)
from model.hand_pose import JOINT_LIMITS, HandPoseSpace
from model.procedural_hand import MANO_PARENTS, procedural_hand_model


@pytest.fixture(scope="module")
def right():
    return HandModel(dtype=torch.float64)


@pytest.fixture(scope="module")
def left():
    return HandModel(side="left", dtype=torch.float64)


def random_params(rng, n=3):
    go = torch.as_tensor(rng.normal(0, 1, (n, 3)))
    hp = torch.as_tensor(rng.normal(0, 0.4, (n, 45)))
    betas = torch.as_tensor(rng.normal(0, 1, (n, 10)))
    transl = torch.as_tensor(rng.normal(0, 0.1, (n, 3)))
    return go, hp, betas, transl


def test_procedural_mesh_is_closed_and_outward():
    data = procedural_hand_model()
    f, v = data["f"], data["v_template"]
    directed = Counter(map(tuple, np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).tolist()))
    assert max(directed.values()) == 1  # consistently oriented
    assert all((b, a) in directed for (a, b) in directed)  # every edge shared by two faces: closed
    tri = v[f]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert 1.5e-4 < volume < 6e-4  # m³, outward normals give a positive volume of a hand's size


def test_procedural_skinning_weights_are_smooth():
    data = procedural_hand_model()
    w, f = data["weights"], data["f"]
    assert np.all(w >= 0) and np.allclose(w.sum(1), 1)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    jump = np.abs(w[edges[:, 0]] - w[edges[:, 1]]).sum(1)
    # no edge hands a vertex over from one bone to another at once: at most half moves per edge
    transfer = 0.5 * jump
    assert transfer.max() <= 0.55 and np.percentile(transfer, 95) < 0.3
    assert set(np.nonzero(w.max(0))[0]) == set(range(16))  # every joint drives some skin


def test_joints_finite_and_in_openpose_order(right):
    out = right(*random_params(np.random.default_rng(0)))
    assert out.joints.shape == (3, 21, 3) and torch.isfinite(out.joints).all()
    assert out.vertices.shape == (3, right.num_vertices, 3)
    rest = right.rest_joints().numpy()
    # bone lengths in the rest pose: an adult hand
    bones = np.linalg.norm(rest[1:] - rest[list(OPENPOSE_PARENTS[1:])], axis=1)
    assert np.all((bones > 0.015) & (bones < 0.1))
    assert 0.16 < np.linalg.norm(rest[12] - rest[0]) < 0.22  # wrist to middle fingertip
    assert 0.07 < np.linalg.norm(rest[ROOT_JOINT] - rest[0]) < 0.11  # palm length


def test_left_is_mirrored_right(right, left):
    go, hp, betas, transl = random_params(np.random.default_rng(1))
    r = right(go, hp, betas, transl * torch.as_tensor(MIRROR))
    l_ = left(mirror_axis_angle(go), mirror_axis_angle(hp), betas, transl)
    mirror = torch.as_tensor(MIRROR)
    assert torch.allclose(l_.joints, r.joints * mirror, atol=1e-7)
    assert torch.allclose(l_.vertices, r.vertices * mirror, atol=1e-7)
    assert np.array_equal(left.faces, right.faces[:, [0, 2, 1]])


def test_left_mirroring_includes_pose_correctives(tmp_path):
    """With non-zero pose blend shapes the mirrored posedirs must still mirror exactly."""
    data = procedural_hand_model()
    data["posedirs"] = np.random.default_rng(2).normal(0, 1e-3, data["posedirs"].shape)
    path = tmp_path / "hand.npz"
    np.savez(path, **data)
    r, l_ = HandModel(path, dtype=torch.float64), HandModel(path, side="left", dtype=torch.float64)
    go, hp, betas, _ = random_params(np.random.default_rng(3))
    a = r(go, hp, betas).vertices * torch.as_tensor(MIRROR)
    b = l_(mirror_axis_angle(go), mirror_axis_angle(hp), betas).vertices
    assert torch.allclose(a, b, atol=1e-7)
    assert not torch.allclose(r(go, hp, betas).vertices, HandModel(dtype=torch.float64)(go, hp, betas).vertices)


@pytest.mark.parametrize("mano_joint", range(1, 16))
def test_pose_moves_only_descendants(right, mano_joint):
    """Rotating one MANO joint moves exactly the OpenPose joints below it in the tree."""
    zero = torch.zeros(1, 45, dtype=torch.float64)
    pose = zero.clone()
    pose[0, 3 * (mano_joint - 1):3 * mano_joint] = torch.tensor([0.5, 0.3, -0.4])
    g, b = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 10, dtype=torch.float64)
    moved = (right(g, pose, b).joints - right(g, zero, b).joints).norm(dim=-1)[0] > 1e-6
    # descendants of mano_joint in MANO's tree, plus that finger's tip (index 16..20 → OpenPose)
    desc = {mano_joint}
    for j in range(16):
        if MANO_PARENTS[j] in desc:
            desc.add(j)
    finger = {1: 17, 2: 17, 3: 17, 4: 18, 5: 18, 6: 18, 7: 20, 8: 20, 9: 20, 10: 19, 11: 19, 12: 19,
              13: 16, 14: 16, 15: 16}[mano_joint]
    expected = {i for i, m in enumerate(OPENPOSE_FROM_MANO) if (m in desc and m != mano_joint) or m == finger}
    assert set(torch.nonzero(moved).flatten().tolist()) == expected


def test_flexion_curls_towards_the_palm(right):
    rest = right.rest_joints().numpy()
    space = HandPoseSpace(rest)
    dofs = np.zeros((1, 20))
    dofs[0, [0, 2, 3]] = [1.0, 1.2, 0.8]  # index MCP, PIP, DIP
    hp = torch.as_tensor(space.to_hand_pose(dofs))
    bent = right(torch.zeros(1, 3, dtype=torch.float64), hp, torch.zeros(1, 10, dtype=torch.float64)).joints[0]
    tip_move = bent[8].numpy() - rest[8]
    assert tip_move @ space.volar > 0.03  # index tip moved > 3 cm to the palm side
    assert np.allclose(bent[12].numpy(), rest[12])  # middle finger untouched


def test_pose_sequences_are_smooth_and_within_limits(right):
    space = HandPoseSpace(right.rest_joints().numpy())
    seq = space.sample_sequence(np.random.default_rng(4), 120)
    assert np.all(seq >= JOINT_LIMITS[:, 0] - 1e-12) and np.all(seq <= JOINT_LIMITS[:, 1] + 1e-12)
    step = np.abs(np.diff(seq, axis=0)).max()
    assert step < 0.25  # radians per frame
    assert np.ptp(seq, axis=0).max() > 0.5  # and it does move


def test_shape_changes_hand_size(right):
    g, p = torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 45, dtype=torch.float64)
    b = torch.zeros(1, 10, dtype=torch.float64)
    big = b.clone()
    big[0, 0] = 2.0
    span = lambda out: (out.joints[0, 12] - out.joints[0, 0]).norm()
    assert span(right(g, p, big)) > 1.05 * span(right(g, p, b))


def test_rotation_matrix_path_equals_axis_angle_path(right):
    from model.rotations import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
    go, hp, betas, transl = random_params(np.random.default_rng(5))
    full = torch.cat([go, hp], dim=1).reshape(-1, 16, 3)
    R = rot6d_to_matrix(matrix_to_rot6d(axis_angle_to_matrix(full)))
    a = right(go, hp, betas, transl)
    b = right.forward_rotmat(R, betas, transl)
    assert torch.allclose(a.joints, b.joints, atol=1e-6) and torch.allclose(a.vertices, b.vertices, atol=1e-6)


def test_rotation_conversions_round_trip():
    from scipy.spatial.transform import Rotation

    from model.rotations import axis_angle_to_matrix, matrix_to_axis_angle, matrix_to_rot6d, rot6d_to_matrix
    aa = torch.as_tensor(np.random.default_rng(6).normal(0, 1.2, (500, 3)))
    R = axis_angle_to_matrix(aa)
    assert torch.allclose(R, torch.as_tensor(Rotation.from_rotvec(aa.numpy()).as_matrix()), atol=1e-9)
    assert torch.allclose(axis_angle_to_matrix(matrix_to_axis_angle(R)), R, atol=1e-9)
    assert torch.allclose(rot6d_to_matrix(matrix_to_rot6d(R)), R, atol=1e-9)
    # 6D of any two non-parallel vectors gives a proper rotation
    M = rot6d_to_matrix(torch.randn(100, 6, dtype=torch.float64))
    assert torch.allclose(M @ M.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-9)
    assert torch.allclose(torch.det(M), torch.ones(100, dtype=torch.float64))
