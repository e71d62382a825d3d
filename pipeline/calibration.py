"""Camera calibrations in the formats multi-camera rigs are calibrated with, read into capture format v1's
conventions (issue 22): intrinsics ``K`` with pixel centres at integer coordinates (OpenCV), OpenCV
distortion coefficients, and the world→camera pose ``x_cam = R · x_world + t`` with ``t`` in metres.

Formats and the conversion each needs:

* ``anipose`` (aniposelib / FreeMoCap ``calibration.toml``): one ``[cam_N]`` table per camera with
  ``name``, ``size = [w, h]``, ``matrix`` (3×3), ``distortions`` (OpenCV order), ``rotation`` (a
  Rodrigues vector) and ``translation``, world→camera as ``cv2.projectPoints`` takes them:
  ``R = Rodrigues(rotation)``, ``t = translation · unit``. The unit is the calibration board's (often mm).
* ``easymocap`` (``intri.yml`` + ``extri.yml``, OpenCV FileStorage YAML): ``names``, per camera
  ``K_<name>``, ``dist_<name>``, and ``Rot_<name>`` (3×3) or ``R_<name>`` (Rodrigues), ``T_<name>``,
  world→camera, metres. ``--calibration`` takes the folder or either file; a camera that only one of
  the two files lists is reported and left out.
* ``opencv`` (``cv2.FileStorage`` YAML/XML/JSON, one file per camera named ``<camera>.yml`` in a
  folder, or one file for one camera): ``camera_matrix`` (or ``cameraMatrix``, ``K``),
  ``distortion_coefficients`` (or ``dist_coeffs``, ``distCoeffs``, ``dist``, ``D``), ``R`` / ``rvec``
  (3×3 matrix or Rodrigues vector) and ``T`` / ``tvec``, world→camera as ``solvePnP`` and
  ``stereoCalibrate`` give them; optional ``image_width`` / ``image_height``.
* ``colmap`` (text model: ``cameras.txt`` + ``images.txt``): intrinsics per camera model
  (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV), the pose as a unit quaternion
  ``(qw, qx, qy, qz)`` and ``t``, world→camera. COLMAP puts the centre of the top-left pixel at
  (0.5, 0.5), OpenCV at (0, 0): ``cx = cx_colmap − 0.5``, ``cy = cy_colmap − 0.5``. A camera is named
  after the first folder of the image name (``cam0/000001.jpg`` → ``cam0``) or, without a folder, the
  file stem. COLMAP's scale is whatever the reconstruction chose: give ``--units`` (or scale it to metres
  first).

Units: ``m``, ``cm`` or ``mm`` multiply ``t`` by 1, 0.01 or 0.001; ``auto`` takes metres for EasyMocap and
COLMAP and, for anipose and OpenCV files, guesses only where the rig's size leaves no doubt: the median
distance of the cameras from their centroid is at most 5 (metres: a hand rig is 0.2-3 m across) or at
least 200 (millimetres); in between (centimetres, or a small rig in millimetres) it asks for ``--units``.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from model.errors import HamucoError

FORMATS = ("anipose", "easymocap", "opencv", "colmap")
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


class CalibrationError(HamucoError):
    pass


@dataclass
class CameraCalibration:
    name: str
    K: np.ndarray  # (3, 3), OpenCV pixel convention
    dist: Optional[np.ndarray]  # OpenCV coefficients, or None
    R: np.ndarray  # (3, 3) world → camera
    t: np.ndarray  # (3,) in the file's units (see Calibration.units)
    size: Optional[tuple[int, int]] = None  # (width, height) when the file gives it

    @property
    def centre(self) -> np.ndarray:
        """The camera's position in the world (the file's units): ``C = −Rᵀ t``."""
        return -self.R.T @ self.t


@dataclass
class Calibration:
    format: str
    source: str
    cameras: list[CameraCalibration]
    units: str  # m, cm or mm: the unit of the cameras' t
    units_guessed: bool = False
    notes: list[str] = field(default_factory=list)  # cameras left out and why, guesses

    def in_metres(self) -> list[CameraCalibration]:
        s = UNITS[self.units]
        return [CameraCalibration(c.name, c.K, c.dist, c.R, c.t * s, c.size) for c in self.cameras]


def detect_format(path: Path) -> str:
    p = Path(path)
    if p.is_dir():
        names = {q.name for q in p.iterdir()}
        if {"intri.yml", "extri.yml"} & names:
            return "easymocap"
        if {"cameras.txt", "images.txt"} <= names:
            return "colmap"
        if "calibration.toml" in names:
            return "anipose"
        if any(q.suffix.lower() in (".yml", ".yaml", ".xml", ".json") for q in p.iterdir()):
            return "opencv"
    else:
        if p.suffix.lower() == ".toml":
            return "anipose"
        if p.name in ("intri.yml", "extri.yml"):
            return "easymocap"
        if p.name in ("cameras.txt", "images.txt"):
            return "colmap"
        if p.suffix.lower() in (".yml", ".yaml", ".xml", ".json"):
            return "opencv"
    raise CalibrationError(f"{path}: cannot tell the calibration format; give --format "
                           f"({'|'.join(FORMATS)})")


def _matrix(value, shape: tuple, what: str, where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: {what} is not numeric") from None
    if a.size != int(np.prod(shape)) or not np.all(np.isfinite(a)):
        raise CalibrationError(f"{where}: {what} must be {'x'.join(map(str, shape))} finite numbers, got "
                               f"{a.size} value(s)")
    return a.reshape(shape)


def _rotation(value, what: str, where: str) -> np.ndarray:
    """A rotation given as a 3×3 matrix or a Rodrigues vector (3 numbers)."""
    a = np.asarray(value, dtype=np.float64).ravel()
    if a.size == 3:
        return cv2.Rodrigues(a.reshape(3, 1))[0]
    R = _matrix(a, (3, 3), what, where)
    if abs(np.linalg.det(R) - 1) > 1e-3 or np.abs(R @ R.T - np.eye(3)).max() > 1e-3:
        raise CalibrationError(f"{where}: {what} is not a rotation matrix (orthonormal, determinant +1)")
    return R


def _dist(value, where: str = "") -> Optional[np.ndarray]:
    """OpenCV distortion coefficients padded with zeros to the next length OpenCV takes (4, 5, 8, 12, 14);
    None when absent or all zero."""
    if value is None:
        return None
    d = np.asarray(value, dtype=np.float64).ravel()
    if not np.all(np.isfinite(d)):
        raise CalibrationError(f"{where}: distortion coefficients hold NaN or infinity")
    if d.size == 0 or not np.any(d):
        return None
    if d.size > 14:
        raise CalibrationError(f"{where}: {d.size} distortion coefficients; OpenCV takes at most 14")
    n = next(k for k in (4, 5, 8, 12, 14) if k >= d.size)
    return np.concatenate([d, np.zeros(n - d.size)])


# ----------------------------------------------------------------------------- formats

def read_anipose(path: Path) -> tuple[list[CameraCalibration], list[str]]:
    path = Path(path)
    if path.is_dir():
        path = path / "calibration.toml"
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: calibration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationError(f"{path}: not a valid TOML file ({exc})") from None
    cams = []
    for key, sec in doc.items():
        if key == "metadata" or not isinstance(sec, dict):
            continue
        where = f"{path} [{key}]"
        for need in ("matrix", "rotation", "translation"):
            if need not in sec:
                raise CalibrationError(f"{where}: no '{need}'")
        size = sec.get("size")
        cams.append(CameraCalibration(
            name=str(sec.get("name", key)), K=_matrix(sec["matrix"], (3, 3), "matrix", where),
            dist=_dist(sec.get("distortions"), where), R=_rotation(sec["rotation"], "rotation", where),
            t=_matrix(sec["translation"], (3,), "translation", where),
            size=(int(size[0]), int(size[1])) if size is not None and len(size) == 2 else None))
    if not cams:
        raise CalibrationError(f"{path}: no camera section ([cam_0], ...)")
    return cams, []


def _fs_open(path: Path) -> cv2.FileStorage:
    if not Path(path).is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as exc:
        raise CalibrationError(f"{path}: not an OpenCV FileStorage file ({str(exc).strip().splitlines()[-1]})") from None
    if not fs.isOpened():
        raise CalibrationError(f"{path}: not an OpenCV FileStorage file")
    return fs


def _fs_mat(fs: cv2.FileStorage, key: str) -> Optional[np.ndarray]:
    node = fs.getNode(key)
    if node.empty() or node.isNone():
        return None
    if node.isSeq():
        return np.array([node.at(i).real() for i in range(node.size())])
    if node.isReal() or node.isInt():
        return np.array([node.real()])
    m = node.mat()
    return None if m is None else np.asarray(m, dtype=np.float64)


def _fs_names(fs: cv2.FileStorage, path: Path) -> list[str]:
    node = fs.getNode("names")
    if node.empty() or not node.isSeq():
        raise CalibrationError(f"{path}: no 'names' list of cameras")
    return [node.at(i).string() or str(int(node.at(i).real())) for i in range(node.size())]


def read_easymocap(path: Path) -> tuple[list[CameraCalibration], list[str]]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    intri, extri = folder / "intri.yml", folder / "extri.yml"
    fi, fe = _fs_open(intri), _fs_open(extri)
    try:
        ni, ne = _fs_names(fi, intri), _fs_names(fe, extri)
        notes = [f"camera {n!r} is in {intri.name} but not in {extri.name}: left out" for n in ni if n not in ne]
        notes += [f"camera {n!r} is in {extri.name} but not in {intri.name}: left out" for n in ne if n not in ni]
        cams = []
        for n in (n for n in ni if n in ne):
            K = _fs_mat(fi, f"K_{n}")
            if K is None:
                raise CalibrationError(f"{intri}: camera {n!r}: no K_{n}")
            rot = _fs_mat(fe, f"Rot_{n}")
            if rot is None:
                rot = _fs_mat(fe, f"R_{n}")
            T = _fs_mat(fe, f"T_{n}")
            if rot is None or T is None:
                raise CalibrationError(f"{extri}: camera {n!r}: needs Rot_{n} (or R_{n}) and T_{n}")
            w, h = _fs_mat(fi, f"W_{n}"), _fs_mat(fi, f"H_{n}")
            cams.append(CameraCalibration(
                name=n, K=_matrix(K, (3, 3), f"K_{n}", str(intri)),
                dist=_dist(_fs_mat(fi, f"dist_{n}"), f"{intri}: camera {n!r}"),
                R=_rotation(rot, f"Rot_{n}/R_{n}", str(extri)), t=_matrix(T, (3,), f"T_{n}", str(extri)),
                size=(int(w[0]), int(h[0])) if w is not None and h is not None else None))
    finally:
        fi.release()
        fe.release()
    if not cams:
        raise CalibrationError(f"{folder}: no camera is in both {intri.name} and {extri.name}")
    return cams, notes


_K_KEYS = ("camera_matrix", "cameraMatrix", "K", "M")
_D_KEYS = ("distortion_coefficients", "dist_coeffs", "distCoeffs", "dist", "D")
_R_KEYS = ("R", "rvec", "rotation")
_T_KEYS = ("T", "tvec", "t", "translation")


def _first(fs: cv2.FileStorage, keys: tuple) -> Optional[np.ndarray]:
    for k in keys:
        v = _fs_mat(fs, k)
        if v is not None:
            return v
    return None


def read_opencv(path: Path) -> tuple[list[CameraCalibration], list[str]]:
    path = Path(path)
    files = (sorted(q for q in path.iterdir() if q.suffix.lower() in (".yml", ".yaml", ".xml", ".json"))
             if path.is_dir() else [path])
    if not files:
        raise CalibrationError(f"{path}: no OpenCV FileStorage file (.yml, .yaml, .xml, .json) in the folder")
    cams = []
    for f in files:
        fs = _fs_open(f)
        try:
            K, D, R, T = (_first(fs, keys) for keys in (_K_KEYS, _D_KEYS, _R_KEYS, _T_KEYS))
            w, h = _fs_mat(fs, "image_width"), _fs_mat(fs, "image_height")
        finally:
            fs.release()
        missing = [what for what, v in (("camera_matrix", K), ("R or rvec", R), ("T or tvec", T)) if v is None]
        if missing:
            raise CalibrationError(f"{f}: camera {f.stem!r}: no {', '.join(missing)}")
        cams.append(CameraCalibration(name=f.stem, K=_matrix(K, (3, 3), "camera_matrix", str(f)),
                                      dist=_dist(D, str(f)),
                                      R=_rotation(R, "R", str(f)), t=_matrix(T, (3,), "T", str(f)),
                                      size=(int(w[0]), int(h[0])) if w is not None and h is not None else None))
    return cams, []


# COLMAP camera models → (fx, fy, cx, cy, OpenCV distortion) from the params
_COLMAP_MODELS = {
    "SIMPLE_PINHOLE": lambda p: (p[0], p[0], p[1], p[2], None),
    "PINHOLE": lambda p: (p[0], p[1], p[2], p[3], None),
    "SIMPLE_RADIAL": lambda p: (p[0], p[0], p[1], p[2], [p[3], 0, 0, 0]),
    "RADIAL": lambda p: (p[0], p[0], p[1], p[2], [p[3], p[4], 0, 0]),
    "OPENCV": lambda p: (p[0], p[1], p[2], p[3], list(p[4:8])),
    "FULL_OPENCV": lambda p: (p[0], p[1], p[2], p[3], list(p[4:12])),
}
_COLMAP_PARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 4, "RADIAL": 5, "OPENCV": 8, "FULL_OPENCV": 12}


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise CalibrationError(f"{path}: COLMAP file not found")
    return [(i + 1, ln.strip()) for i, ln in enumerate(path.read_text().splitlines())]


def quaternion_to_matrix(q) -> np.ndarray:
    """Unit quaternion (w, x, y, z), Hamilton convention as COLMAP writes it → rotation matrix."""
    q = np.asarray(q, np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-9:
        raise CalibrationError(f"quaternion {q.tolist()} is not a rotation (zero or not finite)")
    w, x, y, z = q / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def colmap_camera_name(image_name: str) -> str:
    parts = Path(image_name).parts
    return parts[0] if len(parts) > 1 else Path(image_name).stem


def read_colmap(path: Path) -> tuple[list[CameraCalibration], list[str]]:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    cam_file, img_file = folder / "cameras.txt", folder / "images.txt"
    intrinsics = {}
    for no, ln in _lines(cam_file):
        if not ln or ln.startswith("#"):
            continue
        f = ln.split()
        where = f"{cam_file}:{no}"
        model = f[1] if len(f) > 1 else "?"
        if model not in _COLMAP_MODELS:
            raise CalibrationError(f"{where}: camera model {model!r} is not supported (supported: "
                                   f"{', '.join(_COLMAP_MODELS)}; undistort the images with COLMAP first)")
        params = [float(x) for x in f[4:]]
        if len(params) != _COLMAP_PARAMS[model]:
            raise CalibrationError(f"{where}: {model} takes {_COLMAP_PARAMS[model]} parameters, got {len(params)}")
        fx, fy, cx, cy, dist = _COLMAP_MODELS[model](params)
        K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1.0]])  # COLMAP pixel centres at +0.5
        intrinsics[f[0]] = (K, _dist(dist, where), (int(f[2]), int(f[3])))
    cams, seen = [], {}
    body = [(no, ln) for no, ln in _lines(img_file) if not ln.startswith("#")]
    k = 0
    while k < len(body):
        no, ln = body[k]
        k += 2  # every image has a second line (its 2D points, possibly empty)
        if not ln:
            k -= 1
            continue
        f = ln.split()
        where = f"{img_file}:{no}"
        if len(f) < 10:
            raise CalibrationError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        name = colmap_camera_name(" ".join(f[9:]))
        if f[8] not in intrinsics:
            raise CalibrationError(f"{where}: camera id {f[8]} is not in {cam_file.name}")
        try:
            R, t = quaternion_to_matrix([float(x) for x in f[1:5]]), np.array([float(x) for x in f[5:8]])
        except CalibrationError as exc:
            raise CalibrationError(f"{where}: {exc}") from None
        if name in seen:
            prev = seen[name]
            angle = np.degrees(np.arccos(np.clip((np.trace(prev.R.T @ R) - 1) / 2, -1, 1)))
            moved = np.linalg.norm(prev.centre - (-R.T @ t))
            if angle > 0.5 or moved > 0.01 * max(np.linalg.norm(prev.centre), 1e-9):
                raise CalibrationError(f"{where}: camera {name!r} has images at different poses ({angle:.2f}° and "
                                       f"{moved:.3g} apart: a moving camera, or images of several cameras named "
                                       "alike): one pose per camera is needed")
            continue
        K, dist, size = intrinsics[f[8]]
        seen[name] = CameraCalibration(name=name, K=K, dist=dist, R=R, t=t, size=size)
        cams.append(seen[name])
    if not cams:
        raise CalibrationError(f"{img_file}: no registered image")
    return cams, []


READERS = {"anipose": read_anipose, "easymocap": read_easymocap, "opencv": read_opencv, "colmap": read_colmap}


def guess_units(cams: list[CameraCalibration], source: str = "") -> str:
    """m or mm from the rig's spread where it leaves no doubt (module notes); otherwise an error asking for
    --units."""
    C = np.stack([c.centre for c in cams])
    spread = float(np.median(np.linalg.norm(C - C.mean(0), axis=1))) if len(cams) > 1 else float(np.linalg.norm(C))
    if spread <= 5:
        return "m"
    if spread >= 200:
        return "mm"
    raise CalibrationError(f"{source}: the cameras lie a median {spread:.3g} units from their centre: centimetres, "
                           "or a small rig in millimetres? give --units cm or --units mm")


def read_calibration(path: str | Path, fmt: str = "auto", units: str = "auto") -> Calibration:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"{path}: calibration not found")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise CalibrationError(f"unknown calibration format {fmt!r} (choose {', '.join(FORMATS)} or auto)")
    if units not in ("auto", *UNITS):
        raise CalibrationError(f"unknown units {units!r} (choose m, cm, mm or auto)")
    try:
        cams, notes = READERS[fmt](path)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise CalibrationError(f"{path}: malformed {fmt} calibration ({type(exc).__name__}: {exc})") from None
    names = [c.name for c in cams]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CalibrationError(f"{path}: camera name(s) {dup} appear more than once")
    guessed = False
    if units == "auto":
        if fmt in ("easymocap", "colmap"):
            units = "m"
            if fmt == "colmap":
                notes.append("COLMAP's scale is the reconstruction's: taken as metres (give --units, or scale "
                             "the model to metres)")
        else:
            units, guessed = guess_units(cams, str(path)), True
            notes.append(f"units guessed from the camera spread: {units} (give --units to be sure)")
    return Calibration(format=fmt, source=str(path), cameras=cams, units=units, units_guessed=guessed, notes=notes)


def undistort_observations(observations: np.ndarray, cameras) -> np.ndarray:
    """Image points (F, V, J, 2) of cameras with ``K`` and ``dist`` → the pixels a pinhole camera with the
    same ``K`` would see (``cv2.undistortPoints(..., P=K)``); NaN stays NaN."""
    out = np.array(observations, dtype=np.float64)
    for v, c in enumerate(cameras):
        if c.dist is None or not np.any(c.dist != 0):
            continue
        flat = out[:, v].reshape(-1, 2)
        ok = np.all(np.isfinite(flat), axis=1)
        if ok.any():
            flat[ok] = cv2.undistortPoints(flat[ok].reshape(-1, 1, 2), c.K, c.dist, P=c.K).reshape(-1, 2)
        out[:, v] = flat.reshape(out[:, v].shape)
    return out


def baselines(cams: list[CameraCalibration]) -> np.ndarray:
    """Distances between every pair of camera centres (their units)."""
    C = np.stack([c.centre for c in cams])
    i, j = np.triu_indices(len(cams), 1)
    return np.linalg.norm(C[i] - C[j], axis=1)


def scene_centre(cams: list[CameraCalibration]) -> Optional[np.ndarray]:
    """The point closest (least squares) to every camera's optical axis; None when the axes are parallel."""
    A, b = np.zeros((3, 3)), np.zeros(3)
    for c in cams:
        d = c.R[2]  # the optical axis in the world (third row of R)
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c.centre
    if np.linalg.cond(A) > 1e8:
        return None
    return np.linalg.solve(A, b)
