"""OpenPose hand labeler: network layout, weight loading and its errors, batched == plain inference,
and the published peak rule on synthetic heatmaps.

Everything runs on real torch with random weights written to real files under tmp_path; crops are
96×96 and the scales small (network inputs 92–144 px) so the whole file stays fast on 2 CPU cores.
"""
import hashlib
import json

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from model.errors import HamucoError
from pipeline.labelers import openpose as op

LAYOUT = json.loads(op.LAYOUT_PATH.read_text())
UNREACHABLE = "http://127.0.0.1:9/hand_pose_model.pth"
SMALL_SCALES = (0.25, 0.375)  # × 368 / 96 → network inputs 92 (pad 96) and 138 (pad 144)
N_JOINTS_ON = 11  # joints 0..10 get heat above threshold, 11..20 never


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _crops(n: int = 3, size: int = 96) -> np.ndarray:
    """Noise plus a few drawn shapes, different per crop."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2)
        cv2.circle(img, (30 + 10 * i, 50), 18, (40, 120, 230), -1)
        cv2.rectangle(img, (55, 10 + 8 * i), (85, 40 + 8 * i), (250, 250, 250), -1)
        cv2.line(img, (5, 90 - 20 * i), (90, 5 + 10 * i), (10, 10, 10), 3)
        out.append(img)
    return np.stack(out)


def _random_net(seed: int = 0) -> op.OpenPoseHandNet:
    """Random weights whose heatmaps depend on the image; joints ≥ N_JOINTS_ON never pass 0.05."""
    return op.random_hand_net(seed, _crops(1)[0], scale=0.375, joints_on=N_JOINTS_ON)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(net, file): a random net and its state dict saved with the published flat keys."""
    net = _random_net()
    state = net.state_dict()
    flat = {k: state[k].clone() for k in LAYOUT}  # published layout: flat keys, JSON order
    path = tmp_path_factory.mktemp("openpose") / "hand_pose_model.pth"
    torch.save(flat, path)
    return net, path


# ------------------------------------------------------------------------------------------ network

def test_state_dict_matches_published_layout():
    net = op.OpenPoseHandNet()
    state = net.state_dict()
    assert list(state) == list(LAYOUT)  # same keys, same order, no Sequential prefixes
    assert {k: list(v.shape) for k, v in state.items()} == LAYOUT
    assert len(state) == 104
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 36_832_324  # ≈ 36.8 M
    with torch.inference_mode():
        assert net(torch.zeros(2, 3, 64, 48)).shape == (2, 22, 8, 6)  # stride 8, 22 maps


# ------------------------------------------------------------------------------------------ weights

def test_published_layout_file_loads_strict_and_gives_identical_outputs(weights):
    net, path = weights
    state, digest = op.load_openpose_weights(path=path)
    assert digest == _sha(path)
    assert list(state) == list(LAYOUT)
    loaded = op.build_openpose_hand(path)
    assert loaded.weights_sha256 == digest and not loaded.training
    x = torch.rand(1, 3, 64, 64) - 0.5
    with torch.inference_mode():
        assert torch.equal(net(x), loaded(x))


def test_wrong_layout_lists_missing_unexpected_and_shape(weights, tmp_path):
    _, path = weights
    state = torch.load(path, weights_only=True)
    del state["Mconv7_stage6.bias"]
    state["conv_extra.weight"] = torch.zeros(3)
    state["conv1_1.weight"] = torch.zeros(64, 3, 5, 5)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(op.WeightsError) as e:
        op.build_openpose_hand(bad)
    msg = str(e.value)
    assert "missing keys (1): Mconv7_stage6.bias" in msg
    assert "unexpected keys (1): conv_extra.weight" in msg
    assert "conv1_1.weight: expected [64, 3, 3, 3], got [64, 3, 5, 5]" in msg
    assert isinstance(e.value, HamucoError)


def test_unreadable_or_absent_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(op.WeightsError, match="cannot read OpenPose hand weights"):
        op.load_openpose_weights(path=garbage)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(op.WeightsError, match="do not hold a state dict"):
        op.load_openpose_weights(path=tensor_only)
    with pytest.raises(op.WeightsError, match="does not exist"):
        op.load_openpose_weights(path=tmp_path / "nowhere.pth")


def test_unreachable_download_explains_the_three_ways(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    with pytest.raises(op.WeightsError) as e:
        op.load_openpose_weights(url=UNREACHABLE, model_dir=cache_dir, progress=False)
    msg = str(e.value)
    assert "hand_pose_model.pth" in msg
    assert "weights_path" in msg and "[OpenPoseLabeler]" in msg and "--weights" in msg
    assert "weights_url" in msg and UNREACHABLE in msg
    assert str(cache_dir / "hand_pose_model.pth") in msg
    leftovers = list(cache_dir.glob("*")) if cache_dir.exists() else []
    assert leftovers == []  # no partial download left behind

    # Default cache: torch.hub.get_dir()/checkpoints, i.e. under $TORCH_HOME.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(op.WeightsError) as e:
        op.OpenPoseLabeler(weights_url=UNREACHABLE, progress=False)
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints" / "hand_pose_model.pth") in str(e.value)


def test_cached_file_is_used_without_download(weights, tmp_path):
    _, path = weights
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "hand_pose_model.pth").write_bytes(path.read_bytes())
    state, digest = op.load_openpose_weights(url=UNREACHABLE, model_dir=cache_dir, progress=False)
    assert digest == _sha(path) and list(state) == list(LAYOUT)

    # A reachable URL (file://) is fetched into the cache once.
    fresh = tmp_path / "fresh"
    _, digest2 = op.load_openpose_weights(url=path.as_uri(), model_dir=fresh, progress=False)
    assert digest2 == digest and (fresh / "hand_pose_model.pth").is_file()


def test_sha256_checked(weights, tmp_path):
    _, path = weights
    good = _sha(path)
    wrong = "0" * 64
    with pytest.raises(op.WeightsError) as e:
        op.load_openpose_weights(path=path, sha256=wrong)
    assert good in str(e.value) and wrong in str(e.value)
    assert op.load_openpose_weights(path=path, sha256=good.upper())[1] == good

    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "hand_pose_model.pth").write_bytes(path.read_bytes())
    with pytest.raises(op.WeightsError, match=wrong):
        op.load_openpose_weights(url=UNREACHABLE, model_dir=cache_dir, sha256=wrong, progress=False)
    labeler = op.OpenPoseLabeler(weights_url=UNREACHABLE, model_dir=cache_dir, sha256=good, progress=False)
    assert labeler.weights_sha256 == good


# ---------------------------------------------------------------------------------------- inference

def test_batched_labeler_equals_plain(weights):
    _, path = weights
    crops = _crops(3)
    labeler = op.OpenPoseLabeler(weights_path=path, scales=SMALL_SCALES, progress=False, precision="fp32")
    assert labeler.name == "openpose" and labeler.weights_sha256 == _sha(path)
    assert labeler.params["scales"] == list(SMALL_SCALES) and labeler.params["box_size"] == 368
    assert labeler.params["threshold"] == 0.05 and labeler.params["sigma"] == 3.0

    shapes = []
    hook = labeler.net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    kp, conf = labeler.label(crops, batch_size=2)  # batches of 2 and 1
    hook.remove()
    # One network call per scale per batch; resized 92 / 138 px, padded to multiples of 8.
    assert shapes == [(2, 3, 96, 96), (2, 3, 144, 144), (1, 3, 96, 96), (1, 3, 144, 144)]
    assert kp.shape == (3, 21, 2) and kp.dtype == np.float32
    assert conf.shape == (3, 21) and conf.dtype == np.float32

    for i, crop in enumerate(crops):
        kp_ref, conf_ref = op.label_crop_plain(labeler.net, crop, scales=SMALL_SCALES)
        np.testing.assert_array_equal(kp[i], kp_ref)
        np.testing.assert_allclose(conf[i], conf_ref, rtol=1e-6, atol=0)

    # The comparison is meaningful: found and missing joints, peaks that differ between crops,
    # and maps with several components to choose from.
    found = conf > 0
    assert found[:, :N_JOINTS_ON].all() and not found[:, N_JOINTS_ON:].any()
    assert np.all(kp[~found] == 0)
    assert not np.array_equal(kp[0], kp[1]) and not np.array_equal(kp[1], kp[2])
    heat = labeler.heatmaps(crops)
    n_components = [ndimage.label(ndimage.gaussian_filter(heat[i, :, :, j], 3) > 0.05, np.ones((3, 3)))[1]
                     for i in range(3) for j in range(N_JOINTS_ON)]
    assert max(n_components) >= 2

    # Crops must not leak into each other: a crop alone gives the same answer as in the batch.
    kp1, conf1 = labeler.label(crops[1:2])
    np.testing.assert_array_equal(kp1[0], kp[1])

    empty_kp, empty_conf = labeler.label(np.zeros((0, 96, 96, 3), np.uint8))
    assert empty_kp.shape == (0, 21, 2) and empty_conf.shape == (0, 21)


def test_default_scales_geometry_and_equality(weights):
    """Published defaults: scales (0.5, 1, 1.5, 2) × 368 / H → inputs 184, 368, 552, 736 px."""
    _, path = weights
    crops = _crops(2, size=64)
    labeler = op.OpenPoseLabeler(weights_path=path, progress=False, precision="fp32")
    assert labeler.params["scales"] == [0.5, 1.0, 1.5, 2.0]
    shapes = []
    hook = labeler.net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    kp, conf = labeler.label(crops)
    hook.remove()
    # Stacked per scale; on the CPU at most 2·368² input pixels per call (bigger ones one by one).
    assert shapes == [(2, 3, 184, 184), (2, 3, 368, 368)] + [(1, 3, 552, 552)] * 2 + [(1, 3, 736, 736)] * 2
    # the first crop (stacked with the second at the two smaller scales) against the published one-crop
    # algorithm; test_batched_labeler_equals_plain compares every crop of a batch at smaller scales
    kp_ref, conf_ref = op.label_crop_plain(labeler.net, crops[0])
    np.testing.assert_array_equal(kp[0], kp_ref)
    np.testing.assert_allclose(conf[0], conf_ref, rtol=1e-6, atol=0)
    assert (conf[:, :N_JOINTS_ON] > 0).any()


def test_batched_nchw_network_within_one_pixel(weights):
    """Without channels_last the batched convolutions round differently from batch-1 ones
    (~1e-7), which can only move a peak between near-equal neighbouring pixels."""
    _, path = weights
    crops = _crops(3)
    labeler = op.OpenPoseLabeler(weights_path=path, scales=SMALL_SCALES, channels_last=False, progress=False,
                                 precision="fp32")
    kp, conf = labeler.label(crops, batch_size=3)
    for i, crop in enumerate(crops):
        kp_ref, conf_ref = op.label_crop_plain(labeler.net, crop, scales=SMALL_SCALES)
        assert np.abs(kp[i] - kp_ref).max() <= 1
        np.testing.assert_allclose(conf[i], conf_ref, atol=1e-5)


def test_resize_pad_uses_128():
    crop = np.zeros((96, 96, 3), np.uint8)
    padded, hw = op._resize_pad(crop, 0.375 * 368 / 96)
    assert hw == (138, 138) and padded.shape == (144, 144, 3)
    assert (padded[138:] == 128).all() and (padded[:, 138:] == 128).all() and (padded[:138, :138] == 0).all()
    x = op._to_input(padded)
    assert x.shape == (1, 3, 144, 144) and x[0, 0, 0, 0] == -0.5 and x[0, 0, -1, -1] == 0.0


# ----------------------------------------------------------------------------------- peak rule

def _blob(shape, cx, cy, peak, sigma):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return peak * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))


def _both(heat):
    """peaks_plain and peaks_batched on one (H, W, 22) map set; they must agree."""
    kp, conf = op.peaks_plain(heat)
    kp_b, conf_b = op.peaks_batched(heat[None])
    np.testing.assert_array_equal(kp_b[0], kp)
    np.testing.assert_array_equal(conf_b[0], conf)
    return kp, conf


def test_component_with_most_heat_wins_then_argmax_inside():
    shape = (60, 90)  # H ≠ W: keypoints are (x, y)
    heat = np.zeros(shape + (22,))
    # Joint 0: a broad blob (more area and more heat) beats a higher but tiny one.
    heat[:, :, 0] = _blob(shape, 70, 20, 0.3, 6) + _blob(shape, 15, 45, 0.6, 2.5)
    # Joint 1: the published "largest" is the largest heat sum, not the pixel count: a wide faint
    # plateau (more pixels above threshold) loses to a compact tall peak (more heat).
    plateau = np.zeros(shape)
    plateau[10:50, 5:45] = 0.06  # heat 96 over ~1100 px above threshold
    heat[:, :, 1] = plateau + _blob(shape, 70, 30, 2.0, 3)  # heat 2π·9·2 ≈ 113 over ~340 px
    # Joint 2: a single-pixel spike of 0.5 is below 0.05 after σ=3 smoothing → (0, 0), 0.
    heat[40, 40, 2] = 0.5
    # Joint 3: nothing at all. Joint 4: a negative map.
    heat[:, :, 4] = -1.0

    smooth = [ndimage.gaussian_filter(heat[:, :, j], 3) > 0.05 for j in range(2)]
    n0 = ndimage.label(smooth[0], np.ones((3, 3)))
    assert n0[1] == 2  # two components for joint 0
    sizes = np.bincount(n0[0].ravel())[1:]
    assert sizes[n0[0][20, 70] - 1] > sizes[n0[0][45, 15] - 1]  # the broad one has more pixels
    lab1, n1 = ndimage.label(smooth[1], np.ones((3, 3)))
    assert n1 == 2
    sizes1 = np.bincount(lab1.ravel())[1:]
    assert sizes1[lab1[30, 20] - 1] > sizes1[lab1[30, 70] - 1]  # the plateau has more pixels

    kp, conf = _both(heat)
    np.testing.assert_array_equal(kp[0], (70, 20))
    assert conf[0] == pytest.approx(heat[20, 70, 0])
    assert heat[45, 15, 0] > heat[20, 70, 0]  # the loser had the higher peak
    np.testing.assert_array_equal(kp[1], (70, 30))
    assert conf[1] == pytest.approx(2.0, abs=1e-6)
    for j in (2, 3, 4) + tuple(range(5, 21)):
        np.testing.assert_array_equal(kp[j], (0, 0))
        assert conf[j] == 0


def test_argmax_inside_component_ignores_higher_heat_elsewhere():
    shape = (64, 64)
    heat = np.zeros(shape + (22,))
    # One big component; a separate isolated spike outside it is higher but contributes less heat.
    heat[:, :, 5] = _blob(shape, 20, 20, 0.4, 7)
    heat[50, 50, 5] = 3.0  # smoothed: 3.0/(2π·9) ≈ 0.053 > 0.05 → its own small component
    lab, n = ndimage.label(ndimage.gaussian_filter(heat[:, :, 5], 3) > 0.05, np.ones((3, 3)))
    assert n == 2
    kp, conf = _both(heat)
    np.testing.assert_array_equal(kp[5], (20, 20))
    assert conf[5] == pytest.approx(0.4)


def test_peaks_batched_equals_plain_on_random_maps():
    rng = np.random.default_rng(3)
    heat = ndimage.gaussian_filter(rng.normal(0, 1, (4, 80, 72, 22)), (0, 5, 5, 0)) * 2.5
    heat[1, :, :, :7] -= 1.0  # some joints of crop 1 below threshold
    kp_b, conf_b = op.peaks_batched(heat)
    found = 0
    for i in range(4):
        kp, conf = op.peaks_plain(heat[i])
        np.testing.assert_array_equal(kp_b[i], kp)
        np.testing.assert_array_equal(conf_b[i], conf)
        found += int((conf > 0).sum())
    assert 0 < found < 4 * 21


# ------------------------------------------------------------------------------------------ fast path

def _cpu_with_native_bf16(monkeypatch, native: bool) -> None:
    import model.precision

    monkeypatch.setattr(model.precision, "cpu_has_native_bf16", lambda: native)


@pytest.mark.parametrize("native_bf16,implementation,within_1px", [(True, "bf16", 0.95), (False, "nnpack", 1.0)])
def test_fast_path_agrees_with_fp32_within_the_stated_tolerances(weights, monkeypatch, native_bf16, implementation,
                                                                 within_1px):
    """The fast path of each kind of CPU against the exact fp32 path on the same crops: bf16 autocast where
    the CPU computes bf16 natively (the capability patched on; here it may run emulated), NNPACK's
    Winograd/FFT fp32 convolutions elsewhere. The same joints found, found keypoints within 1 px (NNPACK:
    all of them; bf16: at least 95%), confidences close."""
    _, path = weights
    _cpu_with_native_bf16(monkeypatch, native_bf16)
    crops = _crops(4)
    exact = op.OpenPoseLabeler(weights_path=path, scales=SMALL_SCALES, progress=False, precision="fp32")
    fast = op.OpenPoseLabeler(weights_path=path, scales=SMALL_SCALES, progress=False, precision="fast")
    auto = op.OpenPoseLabeler(weights_path=path, scales=SMALL_SCALES, progress=False)
    assert fast.params["precision"] == "fast" and exact.params["precision"] == "fp32"
    assert fast.implementation == auto.implementation == fast.params["implementation"] == implementation
    assert exact.implementation == "fp32"
    kp0, c0 = exact.label(crops)
    kp1, c1 = fast.label(crops)
    found0, found1 = c0 > 0, c1 > 0
    assert found0.sum() >= 4 * N_JOINTS_ON - 2  # the comparison is not between empty maps
    assert (found0 == found1).mean() >= (0.99 if implementation == "bf16" else 1.0)
    both = found0 & found1
    d = np.linalg.norm(kp0 - kp1, axis=-1)[both]
    assert (d <= 1.0).mean() >= within_1px, np.sort(d)[-5:]
    assert np.abs(c0 - c1).max() < (0.02 if implementation == "bf16" else 1e-4)
    # and it is a different computation, not the fp32 one under another name
    assert not np.array_equal(c0, c1)
    with pytest.raises(HamucoError, match="precision"):
        op.OpenPoseLabeler(weights_path=path, progress=False, precision="fp8")


def test_nnpack_network_runs_every_spatial_convolution_through_nnpack(weights):
    """Every 3×3 and 7×7 convolution of the fast AVX2 network is NNPACK's; the 1×1 ones and the
    parameters are the network's own; the output matches fp32 to ~1e-5."""
    _, path = weights
    net = op.build_openpose_hand(path, progress=False)
    fast = op.nnpack_network(net)
    kinds = {name: type(m).__name__ for name, m in fast.named_children()}
    spatial = [n for n, m in net.named_children() if m.kernel_size != (1, 1)]
    assert spatial and all(kinds[n] == "_NNPackConv2d" for n in spatial)
    assert all(kinds[n] == "Conv2d" for n, m in net.named_children() if m.kernel_size == (1, 1))
    assert all(type(m).__name__ == "Conv2d" for m in net.children())  # the original is untouched
    assert {k: v.data_ptr() for k, v in fast.state_dict().items()} == \
        {k: v.data_ptr() for k, v in net.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = net(x), fast(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))


def test_fast_path_has_its_own_label_version(small_capture, tmp_path, monkeypatch):
    """Shards made by a fast path never replace (or get taken for) the exact path's, nor each other's:
    the label version names what runs (auto resolves before the version is made)."""
    from tasks.prepare import LabelShard

    kw = dict(capture=str(small_capture.root), out=str(tmp_path), shard=0, labeler="openpose")
    exact = LabelShard(**kw, openpose_precision="fp32")
    versions = {}
    for native in (True, False):
        _cpu_with_native_bf16(monkeypatch, native)
        fast = LabelShard(**kw, openpose_precision="fast")
        assert LabelShard(**kw).label_version == fast.label_version  # auto, the default, is the fast path
        versions[native] = fast.label_version
    assert len({exact.label_version, *versions.values()}) == 3
    fast = LabelShard(**kw, openpose_precision="fast")
    assert exact.label_version != fast.label_version
    assert exact.output()["shard"].path != fast.output()["shard"].path
    # the exact path keeps the version it had before the option existed
    from pipeline.prepare import version_hash

    assert exact.label_version == version_hash("label", "openpose", exact.weights_identity(), exact.crop_size,
                                               exact.refine_params.__dict__)
    # the bf16 path keeps the version the fast path had before NNPACK's existed
    assert versions[True] == version_hash("label", "openpose", exact.weights_identity(), exact.crop_size,
                                          exact.refine_params.__dict__, "openpose-precision", "fast")
    # other labelers ignore the option
    mp = dict(kw, labeler="mediapipe")
    assert LabelShard(**mp).label_version == LabelShard(**mp, openpose_precision="fast").label_version
