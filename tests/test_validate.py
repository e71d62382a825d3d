"""Every validation error, each on a broken copy of a generated capture."""
import json

import cv2
import numpy as np
import pytest

from pipeline.capture import CaptureError, load_capture
from pipeline.validate import validate_capture
from tasks.cli import main


def edit_json(root, change):
    path = root / "capture.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def codes(report):
    return {p.code for p in report.problems}


def only(report, code):
    found = [p for p in report.problems if p.code == code]
    assert found, f"{code} not reported: {[str(p) for p in report.problems]}"
    return found


def test_generated_capture_is_valid(small_capture):
    report = validate_capture(small_capture.root)
    assert report.ok and not report.problems
    assert report.views_checked == 4 * 3


def test_missing_frame_names_file_frame_camera(capture_copy):
    img = capture_copy / "images" / "cam02" / "000001.png"
    img.unlink()
    report = validate_capture(capture_copy)
    (p,) = only(report, "frame_missing")
    assert (p.severity, p.frame, p.camera, p.file) == ("error", "000001", "cam02", str(img))
    assert not report.ok


def test_extra_frame_is_a_warning(capture_copy):
    src = capture_copy / "images" / "cam00" / "000000.png"
    (capture_copy / "images" / "cam00" / "000099.png").write_bytes(src.read_bytes())
    report = validate_capture(capture_copy)
    (p,) = only(report, "frame_extra")
    assert p.severity == "warning" and p.frame == "000099" and p.camera == "cam00"
    assert report.ok  # warnings do not fail validation


def test_unreadable_and_empty_images(capture_copy):
    (capture_copy / "images" / "cam01" / "000000.png").write_bytes(b"not an image at all")
    (capture_copy / "images" / "cam03" / "000002.png").write_bytes(b"")
    report = validate_capture(capture_copy)
    (u,) = only(report, "image_unreadable")
    (e,) = only(report, "image_empty")
    assert (u.camera, u.frame) == ("cam01", "000000")
    assert (e.camera, e.frame) == ("cam03", "000002")


def test_image_size_differs_from_calibration(capture_copy):
    path = capture_copy / "images" / "cam00" / "000002.png"
    cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (100, 80)))
    report = validate_capture(capture_copy)
    (p,) = only(report, "image_size_mismatch")
    assert "100x80" in p.message and "160x160" in p.message and p.camera == "cam00" and p.frame == "000002"


@pytest.mark.parametrize("value, code", [(float("nan"), "K_nonfinite"), (0.0, "K_singular")])
def test_bad_intrinsics(capture_copy, value, code):
    def change(doc):
        doc["cameras"][1]["K"][0][0] = value
        doc["cameras"][1]["K"][0][1] = 0.0
    edit_json(capture_copy, change)
    report = validate_capture(capture_copy)
    (p,) = only(report, code)
    assert p.camera == "cam01" and p.file.endswith("capture.json")


def test_R_not_a_rotation(capture_copy):
    def change(doc):
        doc["cameras"][2]["R"] = (2.0 * np.asarray(doc["cameras"][2]["R"])).tolist()
        doc["cameras"][3]["R"] = (np.diag([1.0, 1.0, -1.0]) @ np.asarray(doc["cameras"][3]["R"])).tolist()
    edit_json(capture_copy, change)
    report = validate_capture(capture_copy)
    assert {p.camera for p in only(report, "R_not_rotation")} == {"cam02", "cam03"}  # scaled, reflected


def test_duplicate_camera_names(capture_copy):
    edit_json(capture_copy, lambda doc: doc["cameras"][3].update(name="cam00"))
    report = validate_capture(capture_copy)
    (p,) = only(report, "camera_name_duplicate")
    assert p.camera == "cam00"


def test_unknown_format_version(capture_copy):
    edit_json(capture_copy, lambda doc: doc.update(version=99))
    report = validate_capture(capture_copy)
    (p,) = only(report, "version_unknown")
    assert "99" in p.message and not report.ok
    with pytest.raises(CaptureError, match="version 99"):
        load_capture(capture_copy)


def test_unknown_format_name_and_broken_json(capture_copy):
    edit_json(capture_copy, lambda doc: doc.update(format="something-else"))
    assert "format_unknown" in codes(validate_capture(capture_copy))
    (capture_copy / "capture.json").write_text("{ not json")
    (p,) = only(validate_capture(capture_copy), "capture_json_invalid")
    assert p.file.endswith("capture.json") and "line 1" in p.message


def test_every_problem_reported_at_once(capture_copy):
    (capture_copy / "images" / "cam02" / "000000.png").unlink()
    (capture_copy / "images" / "cam01" / "000001.png").write_bytes(b"")

    def change(doc):
        doc["cameras"][0]["K"][1][1] = float("inf")
        doc["cameras"][3]["name"] = "cam02"
    edit_json(capture_copy, change)
    report = validate_capture(capture_copy)
    assert {"frame_missing", "image_empty", "K_nonfinite", "camera_name_duplicate"} <= codes(report)


def test_cli_exit_codes_and_messages(capture_copy, small_capture, capsys):
    assert main(["validate", str(small_capture.root), "--quiet"]) == 0
    assert "OK (0 errors" in capsys.readouterr().out
    (capture_copy / "images" / "cam02" / "000001.png").unlink()
    assert main(["validate", str(capture_copy), "--quiet", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["problems"][0]["camera"] == "cam02"
    edit_json(capture_copy, lambda doc: doc["cameras"][0].update(R=[[1, 0], [0, 1]]))
    assert main(["validate", str(capture_copy), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "R_invalid" in text and "Traceback" not in text


def test_video_capture(small_capture, tmp_path):
    """A capture with one video per camera validates and reads by frame index."""
    import shutil
    root = tmp_path / "video"
    shutil.copytree(small_capture.root, root)
    doc = json.loads((root / "capture.json").read_text())
    for cam in doc["cameras"]:
        video = root / "videos" / f"{cam['name']}.avi"
        video.parent.mkdir(exist_ok=True)
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, tuple(cam["image_size"]))
        for fid in doc["frames"]:
            writer.write(cv2.imread(str(root / cam["images"].format(frame=fid))))
        writer.release()
        del cam["images"]
        cam["video"] = f"videos/{cam['name']}.avi"
    doc["frames"].append("000003")  # one frame more than the videos hold
    (root / "capture.json").write_text(json.dumps(doc))
    report = validate_capture(root)
    missing = only(report, "frame_missing")
    assert {(p.camera, p.frame) for p in missing} == {(f"cam{k:02d}", "000003") for k in range(4)}
    cap = load_capture(root)
    img = cap.read_image(1, 2)
    ref = cv2.imread(str(small_capture.image_path(1, 2)))
    assert img.shape == ref.shape and np.abs(img.astype(int) - ref).mean() < 8
