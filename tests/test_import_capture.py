"""hamuco import-capture (issue 22): a synthetic rig written in each calibration format the field uses,
imported, projects points where the original calibration puts them (<= 0.01 px, with distortion, in each
unit); the import validates and prepares; names that do not match, a mis-scaled or transposed calibration
and shifted videos are caught or put right."""
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.errors import HamucoError
from pipeline.calibration import quaternion_to_matrix, read_calibration
from pipeline.capture import load_capture
from pipeline.validate import validate_capture
from tasks.cli import main

UNIT = {"m": 1.0, "cm": 100.0, "mm": 1000.0}  # metres → the file's unit
DIST = np.array([-0.12, 0.03, 0.0008, -0.0005, 0.004])


# ----------------------------------------------------------------------------- writers (a file per format)

def rig(views=4, size=128, seed=0, dist=True):
    """Cameras on a ring 0.6 m around the origin, looking at it, with OpenCV distortion."""
    from model.geometry import look_at

    rng = np.random.default_rng(seed)
    out = []
    for v in range(views):
        a = 2 * np.pi * v / views + rng.uniform(-0.2, 0.2)
        c = np.array([0.6 * np.cos(a), 0.6 * np.sin(a), rng.uniform(-0.2, 0.2)])
        R, t = look_at(c, np.zeros(3), np.array([0.0, 0.0, 1.0]))
        f = rng.uniform(150, 170)
        K = np.array([[f, 0, size / 2 + rng.uniform(-2, 2)], [0, f * 1.002, size / 2 + rng.uniform(-2, 2)], [0, 0, 1]])
        d = DIST * rng.uniform(0.8, 1.2, 5) if dist else None
        out.append(dict(name=f"cam{v:02d}", K=K, dist=d, R=R, t=t, size=(size, size)))
    return out


def write_anipose(path: Path, cams: list, unit: str) -> Path:
    lines = []
    for i, c in enumerate(cams):
        rvec = cv2.Rodrigues(c["R"])[0].ravel()
        d = c["dist"] if c["dist"] is not None else np.zeros(5)
        lines += [f"[cam_{i}]", f'name = "{c["name"]}"', f"size = [ {c['size'][0]}, {c['size'][1]},]",
                  "matrix = [ " + ", ".join("[ " + ", ".join(repr(float(x)) for x in row) + ",]" for row in c["K"]) + ",]",
                  "distortions = [ " + ", ".join(repr(float(x)) for x in d) + ",]",
                  "rotation = [ " + ", ".join(repr(float(x)) for x in rvec) + ",]",
                  "translation = [ " + ", ".join(repr(float(x)) for x in c["t"] * UNIT[unit]) + ",]", ""]
    lines += ["[metadata]", "adjusted = false", "error = 0.3"]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_easymocap(folder: Path, cams: list, extra_intri: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fi = cv2.FileStorage(str(folder / "intri.yml"), cv2.FILE_STORAGE_WRITE)
    fe = cv2.FileStorage(str(folder / "extri.yml"), cv2.FILE_STORAGE_WRITE)
    names = [c["name"] for c in cams]
    for fs, ns in ((fi, names + ([extra_intri] if extra_intri else [])), (fe, names)):
        fs.startWriteStruct("names", cv2.FileNode_SEQ)
        for n in ns:
            fs.write("", n)
        fs.endWriteStruct()
    for c in cams + ([dict(cams[0], name=extra_intri)] if extra_intri else []):
        n = c["name"]
        fi.write(f"K_{n}", c["K"])
        fi.write(f"dist_{n}", (c["dist"] if c["dist"] is not None else np.zeros(5)).reshape(1, 5))
        if n == extra_intri:
            continue
        fe.write(f"R_{n}", cv2.Rodrigues(c["R"])[0])
        fe.write(f"Rot_{n}", c["R"])
        fe.write(f"T_{n}", c["t"].reshape(3, 1))
    fi.release()
    fe.release()
    return folder


def write_opencv(folder: Path, cams: list, unit: str, transpose: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(cams):
        fs = cv2.FileStorage(str(folder / f"{c['name']}.yml"), cv2.FILE_STORAGE_WRITE)
        fs.write("image_width", c["size"][0])
        fs.write("image_height", c["size"][1])
        fs.write("camera_matrix", c["K"])
        fs.write("distortion_coefficients", (c["dist"] if c["dist"] is not None else np.zeros(5)).reshape(1, 5))
        R = c["R"].T if c["name"] == transpose else c["R"]
        if i % 2:
            fs.write("rvec", cv2.Rodrigues(R)[0])  # a Rodrigues vector for some, a matrix for others
        else:
            fs.write("R", R)
        fs.write("T", (c["t"] * UNIT[unit]).reshape(3, 1))
        fs.release()
    return folder


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(0.0, 1 + np.trace(R))) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def write_colmap(folder: Path, cams: list, unit: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cl, il = ["# Camera list"], ["# Image list"]
    for i, c in enumerate(cams):
        K, d = c["K"], (c["dist"] if c["dist"] is not None else np.zeros(5))
        params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5, *d[:4]]  # COLMAP: pixel centres at +0.5
        cl.append(f"{i + 1} OPENCV {c['size'][0]} {c['size'][1]} " + " ".join(repr(float(p)) for p in params))
        q = matrix_to_quaternion(c["R"])
        il.append(f"{i + 1} " + " ".join(repr(float(x)) for x in (*q, *(c["t"] * UNIT[unit])))
                  + f" {i + 1} {c['name']}/000000.png")
        il.append("")  # the image's 2D points: none
    (folder / "cameras.txt").write_text("\n".join(cl) + "\n")
    (folder / "images.txt").write_text("\n".join(il) + "\n")
    return folder


def write_videos(folder: Path, cams: list, frames: int = 6, shift: dict | None = None) -> Path:
    """One MJPG video per camera whose frame i shows the grey level of time i - shift (a time stamp)."""
    folder.mkdir(parents=True, exist_ok=True)
    for c in cams:
        w, h = c["size"]
        out = cv2.VideoWriter(str(folder / f"{c['name']}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for i in range(frames):
            time_stamp = i - (shift or {}).get(c["name"], 0)
            out.write(np.full((h, w, 3), 20 + 20 * max(time_stamp, 0), np.uint8))
        out.release()
    return folder


def original_projection(c: dict, X: np.ndarray) -> np.ndarray:
    uv, _ = cv2.projectPoints(X, cv2.Rodrigues(c["R"])[0], c["t"], c["K"],
                              c["dist"] if c["dist"] is not None else np.zeros(5))
    return uv.reshape(-1, 2)


def assert_projects_like(capture_dir: Path, cams: list, tol_px: float = 0.01) -> None:
    cap = load_capture(capture_dir)
    X = np.random.default_rng(1).uniform(-0.1, 0.1, (50, 3))
    assert [c.name for c in cap.cameras] == [c["name"] for c in cams]
    for cam, c in zip(cap.cameras, cams):
        uv, _ = cam.project(X)
        err = np.abs(uv - original_projection(c, X)).max()
        assert err <= tol_px, (cam.name, err)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("fmt,unit", [("anipose", "mm"), ("anipose", "cm"), ("anipose", "m"), ("easymocap", "m"),
                                      ("opencv", "mm"), ("opencv", "m"), ("colmap", "m"), ("colmap", "mm")])
def test_each_format_and_unit_projects_where_the_original_calibration_does(tmp_path, capsys, fmt, unit):
    cams = rig(dist=True)
    calib = {"anipose": lambda: write_anipose(tmp_path / "calibration.toml", cams, unit),
             "easymocap": lambda: write_easymocap(tmp_path / "easymocap", cams),
             "opencv": lambda: write_opencv(tmp_path / "opencv", cams, unit),
             "colmap": lambda: write_colmap(tmp_path / "sparse", cams, unit)}[fmt]()
    videos = write_videos(tmp_path / "videos", cams)
    args = ["import-capture", str(tmp_path / "cap"), "--videos", str(videos), "--calibration", str(calib)]
    if fmt == "colmap" or unit == "cm":
        args += ["--units", unit]  # COLMAP's scale is arbitrary; the others' units are guessed
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"({fmt})" in out and f"units {unit}" in out and "cameras: 4, resolution 128x128" in out
    assert_projects_like(tmp_path / "cap", cams)
    assert (tmp_path / "cap" / "videos" / "cam00.avi").is_symlink()  # linked, not copied
    assert validate_capture(tmp_path / "cap").ok


def test_easymocap_camera_in_one_file_only_is_reported_and_left_out(tmp_path, capsys):
    cams = rig()
    write_easymocap(tmp_path / "em", cams, extra_intri="spare")
    calib = read_calibration(tmp_path / "em" / "intri.yml")
    assert calib.format == "easymocap" and [c.name for c in calib.cameras] == [c["name"] for c in cams]
    assert calib.notes == ["camera 'spare' is in intri.yml but not in extri.yml: left out"]
    assert main(["import-capture", str(tmp_path / "cap"), "--videos", str(write_videos(tmp_path / "v", cams)),
                 "--calibration", str(tmp_path / "em")]) == 0
    assert "note: camera 'spare' is in intri.yml but not in extri.yml" in capsys.readouterr().out


def test_cameras_and_videos_that_do_not_match_are_listed_on_both_sides(tmp_path, capsys):
    cams = rig()
    calib = write_anipose(tmp_path / "calibration.toml", cams, "m")
    videos = write_videos(tmp_path / "v", cams)
    (videos / "cam03.avi").rename(videos / "camera3.avi")
    assert main(["import-capture", str(tmp_path / "cap"), "--videos", str(videos), "--calibration", str(calib)]) == 2
    err = capsys.readouterr().err
    assert "calibration" in err and "cam00, cam01, cam02, cam03" in err and "camera3" in err
    assert "no video for: cam03" in err and "no calibration for: camera3" in err
    assert not (tmp_path / "cap").exists()


def test_a_mis_scaled_or_transposed_calibration_is_caught_naming_the_camera(tmp_path, capsys):
    cams = rig()
    videos = write_videos(tmp_path / "v", cams)
    # millimetres read as metres: the rig is 800 m across
    calib = write_anipose(tmp_path / "calibration.toml", cams, "mm")
    assert main(["import-capture", str(tmp_path / "a"), "--videos", str(videos), "--calibration", str(calib),
                 "--units", "m"]) == 1
    out = capsys.readouterr().out
    assert "[calibration_scale]" in out and "--units mm" in out and "cam00, cam01, cam02, cam03" in out
    assert main(["prepare", str(tmp_path / "a"), "--out", str(tmp_path / "prep")]) == 2  # refused before any work
    assert "calibration_scale" in capsys.readouterr().err
    # one camera's translation in other units than the rest
    bad = [dict(c, t=c["t"] * (1000 if c["name"] == "cam01" else 1)) for c in cams]
    write_anipose(tmp_path / "mixed.toml", bad, "m")
    assert main(["import-capture", str(tmp_path / "b"), "--videos", str(videos), "--calibration",
                 str(tmp_path / "mixed.toml"), "--units", "m"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "[calibration_scale]" in ln]
    assert len(lines) == 1 and "camera cam01" in lines[0]
    # a camera-to-world pose given as world-to-camera: the scene is behind that camera
    inverted = [dict(c, R=c["R"].T, t=-c["R"].T @ c["t"]) if c["name"] == "cam02" else c for c in cams]
    write_opencv(tmp_path / "ocv", inverted, "m")
    assert main(["import-capture", str(tmp_path / "c"), "--videos", str(videos), "--calibration",
                 str(tmp_path / "ocv"), "--units", "m"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "[calibration_facing]" in ln]
    assert len(lines) == 1 and "camera cam02" in lines[0] and lines[0].strip().startswith("error")


def distort_image(img: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """What a lens with OpenCV distortion ``dist`` would have recorded of a pinhole render: the distorted
    image's pixel p shows the render at undistort(p)."""
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1)[:, None]
    src = cv2.undistortPoints(pts, K, dist, P=K).reshape(h, w, 2).astype(np.float32)
    return cv2.remap(img, src[..., 0], src[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A synthetic capture of a hand (6 cameras, 3 frames) and its views as one MJPG video per camera, seen
    through lenses with distortion (k1, k2, p1, p2: what all four formats hold)."""
    from pipeline.synthetic import DEMO_CONFIG, generate_capture

    root = tmp_path_factory.mktemp("rendered")
    syn = generate_capture(root / "syn", replace(DEMO_CONFIG, cameras=6, frames=3, seed=3, image_size=256),
                           progress=False)
    (root / "v").mkdir()
    rng = np.random.default_rng(5)
    cams = []
    for i, c in enumerate(syn.cameras):
        d = DIST * rng.uniform(0.8, 1.2, 5) * np.array([1, 1, 1, 1, 0])
        out = cv2.VideoWriter(str(root / "v" / f"{c.name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                              (c.width, c.height))
        for k in range(syn.num_frames):
            out.write(distort_image(syn.read_image(i, k), c.K, d))
        out.release()
        cams.append(dict(name=c.name, K=c.K, dist=d, R=c.R, t=c.t, size=(c.width, c.height)))
    return root, cams


def test_a_transposed_rotation_is_caught_by_what_the_other_cameras_see(rendered, tmp_path, capsys):
    """With the world origin in the scene a transposed rotation still looks at it (geometry cannot tell);
    observations can: the hand triangulated by the other cameras lands far from where that camera sees
    it. Exact observations (the renders' ground-truth 2D joints) here; MediaPipe's on a travelling hand
    below."""
    from pipeline.validate import calibration_consistency

    root, cams = rendered
    joints = load_capture(root / "syn").ground_truth.joints_world  # (F, 21, 3)
    obs = np.stack([original_projection(c, joints.reshape(-1, 3)).reshape(len(joints), 21, 2) for c in cams],
                   axis=1)  # (F, V, 21, 2) through the lenses
    write_opencv(tmp_path / "ocv", cams, "m", transpose="cam02")
    assert main(["import-capture", str(tmp_path / "cap"), "--videos", str(root / "v"), "--calibration",
                 str(tmp_path / "ocv"), "--units", "m"]) == 0  # geometry alone passes it
    capsys.readouterr()
    problems, med = calibration_consistency(load_capture(tmp_path / "cap"), obs)
    assert [p.camera for p in problems] == ["cam02"] and problems[0].code == "calibration_reprojection"
    assert med["cam02"] > 20 and max(v for k, v in med.items() if k != "cam02") < 0.5, med
    write_opencv(tmp_path / "right", cams, "m")
    assert main(["import-capture", str(tmp_path / "cap-right"), "--videos", str(root / "v"), "--calibration",
                 str(tmp_path / "right"), "--units", "m"]) == 0
    problems, med = calibration_consistency(load_capture(tmp_path / "cap-right"), obs)  # the right calibration
    assert problems == [] and max(med.values()) < 0.1, med


@pytest.mark.parametrize("fmt", ["anipose", "easymocap", "opencv", "colmap"])
def test_an_imported_capture_of_a_rendered_hand_validates_and_prepares(rendered, tmp_path, capsys, fmt):
    """Videos of a synthetic capture's views through distorting lenses and its rig written in each format:
    import, validate, prepare with MediaPipe (the three-command path of the README)."""
    root, cams = rendered
    calib = {"anipose": lambda: write_anipose(tmp_path / "calibration.toml", cams, "m"),
             "easymocap": lambda: write_easymocap(tmp_path / "em", cams),
             "opencv": lambda: write_opencv(tmp_path / "ocv", cams, "m"),
             "colmap": lambda: write_colmap(tmp_path / "sparse", cams, "m")}[fmt]()
    assert main(["import-capture", str(tmp_path / "cap"), "--videos", str(root / "v"), "--calibration", str(calib),
                 "--units", "m", "--hand-frames", "0"]) == 0
    assert main(["validate", str(tmp_path / "cap"), "--quiet"]) == 0
    assert main(["prepare", str(tmp_path / "cap"), "--out", str(tmp_path / "prep"), "--crop-size", "64"]) == 0
    index = json.loads(next((tmp_path / "prep").glob("dataset-*.json")).read_text())
    assert index["quarantine"][0]["views"] == 18 and len(index["shards"]) >= 1
    capsys.readouterr()


def test_colmap_quaternion_convention_and_unsupported_models(tmp_path):
    R = cv2.Rodrigues(np.array([0.3, -0.2, 0.9]))[0]
    assert np.allclose(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12)
    write_colmap(tmp_path, rig(), "m")
    text = (tmp_path / "cameras.txt").read_text().replace("OPENCV", "OPENCV_FISHEYE", 1)
    (tmp_path / "cameras.txt").write_text(text)
    with pytest.raises(HamucoError, match="OPENCV_FISHEYE.*not supported"):
        read_calibration(tmp_path)


def test_frame_offsets_are_estimated_from_a_moving_hand_within_one_frame():
    """Exact observations (a rendered capture's ground-truth 2D joints) of videos shifted on purpose: the
    camera pairs' two-view curves together settle every offset exactly."""
    from pipeline.sync import estimate_offsets
    from pipeline.synthetic import DEMO_CONFIG, build_scene

    cfg = replace(DEMO_CONFIG, cameras=5, frames=24, seed=4, image_size=128, keyframe_every=4)
    scene = build_scene(cfg)
    from pipeline.triangulate import projection_matrices

    P = projection_matrices(np.stack([c.K for c in scene.cameras]), np.stack([c.R for c in scene.cameras]),
                            np.stack([c.t for c in scene.cameras]))
    gt = np.stack([c.project(scene.joints)[0] for c in scene.cameras], axis=1)  # (F, V, 21, 2)
    truth = {1: 3, 2: -2, 4: 1}
    obs = np.full_like(gt, np.nan)
    for c in range(gt.shape[1]):
        for f in range(gt.shape[0]):
            if 0 <= f - truth.get(c, 0) < gt.shape[0]:
                obs[f, c] = gt[f - truth.get(c, 0), c]  # this camera's video frame f shows time f - offset
    names = [c.name for c in scene.cameras]
    est = estimate_offsets(P, obs, names, max_offset=5)
    for c, name in enumerate(names[1:], start=1):
        e = est[name]
        assert e["offset"] == truth.get(c, 0) and not e["ambiguous"], (name, e)  # exact data: exact offsets
        assert e["curve"][e["offset"]] == min(v for v in e["curve"].values() if v is not None)
    # two cameras: the pair's own curve settles it
    two = estimate_offsets(P[:2], obs[:, :2], names[:2], max_offset=5)
    assert two[names[1]]["offset"] == truth[1] and not two[names[1]]["ambiguous"], two
    # a reference camera that never sees the hand ties nobody to it: no offset, and the reason
    blind = obs.copy()
    blind[:, 0] = np.nan
    est = estimate_offsets(P, blind, names, max_offset=5)
    assert all(e["offset"] is None and "ties it to the reference" in e["reason"] for n, e in est.items()
               if n != names[0]), est
    # a still hand agrees at every offset: nothing to estimate, and it says so
    still = np.repeat(gt[:1], gt.shape[0], axis=0)
    est = estimate_offsets(P, still, names, max_offset=3)
    assert all(e["ambiguous"] for n, e in est.items() if n != names[0])


SHIFT = {"cam01": 2, "cam02": -1, "cam04": 3}  # camera -> frame offset put into its video on purpose
LEAD = 3  # video frame f of camera c shows scene time f - SHIFT[c] + LEAD


@pytest.fixture(scope="module")
def travelling(tmp_path_factory):
    """A hand that moves through the scene as real hands do (SynthConfig.travel: up to 6 cm from the rig's
    centre), 8 cameras, and one MJPG video per camera of 24 frames, three of them shifted by SHIFT."""
    from pipeline.synthetic import DEMO_CONFIG, generate_capture

    root = tmp_path_factory.mktemp("travelling")
    frames = 24
    syn = generate_capture(root / "syn", replace(DEMO_CONFIG, cameras=8, frames=frames + 2 * LEAD, seed=0,
                                                 image_size=256, travel=0.06), progress=False)
    (root / "v").mkdir()
    for i, c in enumerate(syn.cameras):
        out = cv2.VideoWriter(str(root / "v" / f"{c.name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                              (c.width, c.height))
        for f in range(frames):
            out.write(syn.read_image(i, f - SHIFT.get(c.name, 0) + LEAD))
        out.release()
    cams = [dict(name=c.name, K=c.K, dist=None, R=c.R, t=c.t, size=(c.width, c.height)) for c in syn.cameras]
    return root, syn, cams


def test_offsets_estimated_from_mediapipe_put_shifted_videos_back_in_sync(travelling, tmp_path, capsys):
    """hamuco import-capture --estimate-offsets on MediaPipe's landmarks: every camera's offset within one
    frame of the shift put in (exact here), none ambiguous, the curves kept in sync.json, and the imported
    capture's frame k shows the same instant in every camera."""
    root, syn, cams = travelling
    write_opencv(tmp_path / "ocv", cams, "m")
    base = ["import-capture", str(tmp_path / "cap"), "--videos", str(root / "v"), "--calibration",
            str(tmp_path / "ocv"), "--units", "m"]
    assert main(base + ["--estimate-offsets", "3", "--frame-offsets", "cam01=1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(base + ["--estimate-offsets", "3", "--max-offset", "1"]) == 2
    assert "--max-offset must be at least 2" in capsys.readouterr().err
    assert main(base + ["--estimate-offsets", "21", "--max-offset", "5", "--start", "3", "--end", "18"]) == 0
    out = capsys.readouterr().out
    assert "frame offsets estimated from the hand" in out and "AMBIGUOUS" not in out
    sync = json.loads((tmp_path / "cap" / "sync.json").read_text())
    assert sync["cam00"] == {"offset": 0, "reference": True}
    for c in cams[1:]:
        e = sync[c["name"]]
        assert e["offset"] == SHIFT.get(c["name"], 0) and not e["ambiguous"], (c["name"], e)  # exact here
        assert set(e["curve"]) == {str(o) for o in range(-5, 6)}
    cap = load_capture(tmp_path / "cap")
    assert {c.name: c.frame_offset for c in cap.cameras} == {c["name"]: sync[c["name"]]["offset"] for c in cams}
    for k in (0, cap.num_frames - 1):  # the same scene time in every camera: the nearest rendered image
        for v in range(len(cams)):
            img = cap.read_image(v, k).astype(np.float32)
            diffs = [np.abs(img - syn.read_image(v, t).astype(np.float32)).mean() for t in range(syn.num_frames)]
            assert int(np.argmin(diffs)) == 3 + k + LEAD, (k, cams[v]["name"])


def test_a_transposed_rotation_is_caught_on_mediapipe_landmarks_naming_the_camera(travelling, tmp_path, capsys):
    """hamuco validate --hand-frames on the travelling hand: the right calibration passes; a transposed
    rotation (a camera whose R and R^T differ by 95 degrees) fails naming that camera alone."""
    root, syn, cams = travelling
    for name, transpose in (("right", None), ("transposed", "cam02")):
        write_opencv(tmp_path / name, cams, "m", transpose=transpose)
        offsets = ",".join(f"{n}={o}" for n, o in SHIFT.items())
        assert main(["import-capture", str(tmp_path / f"cap-{name}"), "--videos", str(root / "v"), "--calibration",
                     str(tmp_path / name), "--units", "m", "--frame-offsets", offsets]) == 0
        capsys.readouterr()
        code = main(["validate", str(tmp_path / f"cap-{name}"), "--quiet", "--hand-frames", "6"])
        out = capsys.readouterr().out
        flagged = [ln for ln in out.splitlines() if "[calibration_reprojection]" in ln]
        if transpose is None:
            assert code == 0 and flagged == [], out
        else:
            assert code == 1 and len(flagged) == 1 and "camera cam02" in flagged[0], out


def test_units_are_guessed_only_where_the_rig_leaves_no_doubt(tmp_path):
    cams = rig()
    for unit, expected in (("m", "m"), ("mm", "mm"), ("cm", None)):
        path = write_anipose(tmp_path / f"{unit}.toml", cams, unit)
        if expected is None:  # a 1.2 m rig in centimetres could be a small one in millimetres: ask
            with pytest.raises(HamucoError, match="give --units cm or --units mm"):
                read_calibration(path)
        else:
            calib = read_calibration(path)
            assert calib.units == expected and calib.units_guessed
    bad = tmp_path / "bad.toml"
    bad.write_text('[cam_0]\nname = "a"\nmatrix = [[1, 0], [0, 1]]\nrotation = [0, 0, 0]\ntranslation = [0, 0, 1]\n')
    with pytest.raises(HamucoError, match="matrix must be 3x3"):
        read_calibration(bad, units="m")
