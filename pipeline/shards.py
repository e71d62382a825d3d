"""HDF5 shard schema v1: hand crops, pseudo labels and geometry of ONE capture, one reader and one writer.

A shard holds ``N`` samples; a sample is one frame seen by ``V`` views (``V`` fixed per shard), each view a
square ``S``×``S`` RGB ``uint8`` crop with its labels. Every per-sample dataset has the sample index as its
first, resizable axis:

====================== ========= ======================= ==========================================
dataset                dtype     shape                   meaning
====================== ========= ======================= ==========================================
``crops``              uint8     (N, V, S, S, 3)         RGB crops, one sample per chunk
``keypoints``          float32   (N, V, 21, 2)           labeler's joints, crop pixels
``confidence``         float32   (N, V, 21)              labeler's confidence
``refined_confidence`` float32   (N, V, 21)              confidence after multi-view refinement
``view_valid``         bool      (N, V)                  the view has a usable crop and labels
``recovered``          bool      (N, V)                  the view's hand was recovered (not detected)
``flipped``            bool      (N, V)                  the crop is mirrored (a left hand shown right)
``crop_affine``        float64   (N, V, 2, 3)            image → crop: ``crop = A @ [x, y, 1]``
``crop_K``             float64   (N, V, 3, 3)            intrinsics seen from the crop, NaN unknown
``extrinsics``         float64   (N, V, 3, 4)            world → camera ``[R | t]``
``extrinsics_known``   bool      (N, V) or (V,)          the extrinsics are calibrated
``triangulated``       float32   (N, 21, 3)              world joints from refinement, NaN if none
``reprojection_error`` float32   (N, V, 21)              pixels, NaN when not available
``frame_ids``          str       (N,)                    variable-length UTF-8
``gt_joints_world``    float32   (N, 21, 3)              optional ground truth
``gt_joints_2d``       float32   (N, V, 21, 2)           optional ground truth, crop pixels
``gt_visibility``      bool      (N, V, 21)              optional ground truth
``camera_names``       str       (V,)                    per shard
====================== ========= ======================= ==========================================

Optional label versions beside the labeler's own (``pipeline/bootstrap.py``; all five present or none, the
labeler's ``keypoints`` / ``confidence`` are never changed):

=========================== ========= =============== =================================================
``bootstrapped_keypoints``  float32   (N, V, 21, 2)   multi-view bootstrapped joints, crop pixels
``bootstrapped_confidence`` float32   (N, V, 21)      their confidence
``bootstrapped_view_valid`` bool      (N, V)          the view has bootstrapped labels (a crop exists)
``bootstrap_source``        uint8     (N, V, 21)      0 the labeler's label kept, 1 replaced by the
                                                      reprojection (disagreed), 2 filled (no label),
                                                      3 nothing (no label and no 3D joint)
``bootstrap_joints``        float32   (N, 21, 3)      world joints the reprojections come from
                                                      (triangulated, smoothed over time if asked)
=========================== ========= =============== =================================================

The writer always stores ``extrinsics_known`` per sample, (N, V); the reader also accepts the (V,) form.
Each optional ground-truth dataset is present when the shard's first sample has that field (all samples
of a shard then must have it, or none).

Root attributes: ``schema`` = ``"hamuco-shard"``, ``schema_version`` = 1, ``created`` (ISO 8601 UTC),
``code_version``, ``labeler``, ``labeler_params`` (JSON), ``weights_sha256``, ``source_capture``,
``capture_hash``, ``crop_size``, ``num_views``, ``handedness``, ``provenance`` (JSON, any extra
provenance) and ``num_samples`` (written last, at close; a consistency check for :func:`verify_shard`).

Writing is atomic: :class:`ShardWriter` writes to ``.<name>.<host>.<pid>.<random>.tmp`` (``model.atomic``) in the target's directory,
then closes, fsyncs and renames it onto the final path; an exception inside the ``with`` block removes
the temporary file, so a file at the final path is always complete. (A process killed with SIGKILL can
leave a stale temporary behind, never a file at the final path; the next writer of that shard removes it.) Writing the same inputs twice
gives identical datasets and identical attributes except ``created``.

Reading is fork/worker friendly: :class:`ShardReader` stores the path and opens the HDF5 file lazily per
process (it reopens when the PID changes, e.g. in a forked DataLoader worker, and pickles as its path).

Crop compression, chosen by measurement (``bench/shards.py``: 64 samples × 8 views × 256² crops, one
process, random sample order, page cache warm, 2-core VM, h5py 3.16 / HDF5 2.0). Synthetic crops =
smoothed multi-scale noise with a hand-like blob and Gaussian sensor noise σ=2; demo crops = random
windows of the rendered demo capture's images (``--images demo_output/capture/images``):

    option     ratio        write    read MB/s        view-crops/s      8-view samples/s
               syn / demo   MB/s     syn / demo       syn / demo        with labels, syn / demo
    none       0.99 / 0.99  540-1030 12000-13500      60000-69000       ~3400 / ~3400
    lzf        0.99 / 1.03  135-200  ~12000 / 630     ~62000 / ~3200    ~3300 / ~360
    gzip-1     1.10 / 1.23  50-57    285 / 250        ~1450 / ~1260     ~170 / ~150
    PNG (cv2)  1.79 / 1.95  ~55      165-180 / 115    840-900 / ~580    (bench only)

Camera-like crops carry noise in every pixel and smooth gradients without repeated bytes, which the
byte-oriented HDF5 filters barely shrink: lzf saves 0-3 % (HDF5 stores a chunk raw when lzf cannot
shrink it, hence its "none"-like read speed on noisy crops), gzip-1 9-19 % at ~45× lower read speed,
leaving only a 1.3-1.5× margin over the goal of 1000 view-crops/s per process. Lossless PNG roughly
halves the file but decodes at 570-900 view-crops/s, below the goal. Crops are therefore stored
**uncompressed** (``DEFAULT_COMPRESSION = "none"``): ~60× over the read goal, writes never the
bottleneck, no decode step. The cost is disk, ~1.6 MB per 8-view 256² sample: a dataset larger than
the page cache needs ~200 MB/s of disk reads per 1000 view-crops/s (gzip-1 would save only 10-20 %).
``compression="lzf"`` and ``"gzip1"`` remain writer options (e.g. for flat, noise-free renders); the
reader reads any of them transparently.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import h5py
import numpy as np

from model.atomic import commit, fault_point, new_temporary
from model.errors import HamucoError

SHARD_SCHEMA = "hamuco-shard"
SHARD_SCHEMA_VERSION = 1
NUM_JOINTS = 21
DEFAULT_COMPRESSION = "none"
COMPRESSIONS = {"none": {}, "lzf": {"compression": "lzf"}, "gzip1": {"compression": "gzip", "compression_opts": 1}}

_J = NUM_JOINTS
# name → (dtype, per-sample shape with "V" = views, "S" = crop size)
_FIELDS: dict[str, tuple[type, tuple]] = {
    "crops": (np.uint8, ("V", "S", "S", 3)),
    "keypoints": (np.float32, ("V", _J, 2)),
    "confidence": (np.float32, ("V", _J)),
    "refined_confidence": (np.float32, ("V", _J)),
    "view_valid": (np.bool_, ("V",)),
    "recovered": (np.bool_, ("V",)),
    "flipped": (np.bool_, ("V",)),
    "crop_affine": (np.float64, ("V", 2, 3)),
    "crop_K": (np.float64, ("V", 3, 3)),
    "extrinsics": (np.float64, ("V", 3, 4)),
    "extrinsics_known": (np.bool_, ("V",)),
    "triangulated": (np.float32, (_J, 3)),
    "reprojection_error": (np.float32, ("V", _J)),
}
_GT_FIELDS: dict[str, tuple[type, tuple]] = {
    "gt_joints_world": (np.float32, (_J, 3)),
    "gt_joints_2d": (np.float32, ("V", _J, 2)),
    "gt_visibility": (np.bool_, ("V", _J)),
}
_BOOTSTRAP_FIELDS: dict[str, tuple[type, tuple]] = {
    "bootstrapped_keypoints": (np.float32, ("V", _J, 2)),
    "bootstrapped_confidence": (np.float32, ("V", _J)),
    "bootstrapped_view_valid": (np.bool_, ("V",)),
    "bootstrap_source": (np.uint8, ("V", _J)),
    "bootstrap_joints": (np.float32, (_J, 3)),
}
# optional groups: a shard has every field of a group for all its samples, or none
_OPTIONAL_GROUPS = {"ground-truth": _GT_FIELDS, "bootstrapped-label": _BOOTSTRAP_FIELDS}
_OPTIONAL_FIELDS = {**_GT_FIELDS, **_BOOTSTRAP_FIELDS}
_ALL_FIELDS = {**_FIELDS, **_OPTIONAL_FIELDS}

# attributes the caller passes (required / optional with default); the writer owns the rest
_REQUIRED_ATTRS = ("labeler", "source_capture", "capture_hash", "handedness")
_OPTIONAL_ATTRS = ("code_version", "labeler_params", "weights_sha256", "provenance")
_JSON_ATTRS = ("labeler_params", "provenance")
_WRITER_ATTRS = ("schema", "schema_version", "created", "crop_size", "num_views", "num_samples")
_HANDEDNESS = ("right", "left")
_META_CHUNK_BYTES = 64 * 1024  # per-sample label datasets: chunks of about this many bytes (a few dozen samples)


class ShardError(HamucoError):
    """A shard file is missing, incomplete, corrupt, of another schema version, or a sample is malformed."""


@dataclass(eq=False)
class ShardSample:
    """One frame of a shard, ``V`` views (arrays without the sample axis; see the module table).

    Compare samples with :meth:`equals` (``==`` on numpy arrays is element-wise).
    """

    frame_id: str
    crops: np.ndarray  # (V, S, S, 3) uint8 RGB
    keypoints: np.ndarray  # (V, 21, 2) float32, crop pixels
    confidence: np.ndarray  # (V, 21) float32
    refined_confidence: np.ndarray  # (V, 21) float32
    view_valid: np.ndarray  # (V,) bool
    recovered: np.ndarray  # (V,) bool
    flipped: np.ndarray  # (V,) bool
    crop_affine: np.ndarray  # (V, 2, 3) float64, image → crop
    crop_K: np.ndarray  # (V, 3, 3) float64, NaN when unknown
    extrinsics: np.ndarray  # (V, 3, 4) float64, world → camera [R | t]
    extrinsics_known: np.ndarray  # (V,) bool
    triangulated: np.ndarray  # (21, 3) float32, NaN when not available
    reprojection_error: np.ndarray  # (V, 21) float32, NaN when not available
    gt_joints_world: Optional[np.ndarray] = None  # (21, 3) float32
    gt_joints_2d: Optional[np.ndarray] = None  # (V, 21, 2) float32, crop pixels
    gt_visibility: Optional[np.ndarray] = None  # (V, 21) bool
    bootstrapped_keypoints: Optional[np.ndarray] = None  # (V, 21, 2) float32, crop pixels
    bootstrapped_confidence: Optional[np.ndarray] = None  # (V, 21) float32
    bootstrapped_view_valid: Optional[np.ndarray] = None  # (V,) bool
    bootstrap_source: Optional[np.ndarray] = None  # (V, 21) uint8 (module table)
    bootstrap_joints: Optional[np.ndarray] = None  # (21, 3) float32, world

    def equals(self, other: "ShardSample") -> bool:
        """Exact equality of every field (NaN equals NaN, dtypes must match)."""
        if self.frame_id != other.frame_id:
            return False
        for name in _ALL_FIELDS:
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None:
                if a is not b:
                    return False
                continue
            a, b = np.asarray(a), np.asarray(b)
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                return False
        return True


def _shape(template: tuple, views: int, size: int) -> tuple:
    return tuple(views if d == "V" else size if d == "S" else d for d in template)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- writer

class ShardWriter:
    """Writes one shard atomically; use as a context manager.

    ``ShardWriter(path, camera_names, crop_size, attrs)``; ``attrs`` holds ``labeler``, ``source_capture``,
    ``capture_hash``, ``handedness`` ("right"/"left") and optionally ``code_version`` (default: this
    checkout's), ``labeler_params`` (dict, stored as JSON), ``weights_sha256`` (default "") and
    ``provenance`` (dict of any extra provenance, stored as JSON). ``compression`` is one of
    ``"none"`` (default, see the module notes), ``"lzf"``, ``"gzip1"``; it applies to the crops only.

    ``add(sample)`` buffers samples and writes them in groups of ``group`` samples. On normal exit
    the writer stores the attributes, closes, fsyncs and renames the temporary file onto ``path``
    (replacing an existing file); on an exception it deletes the temporary file and re-raises.
    """

    def __init__(self, path, camera_names: Sequence[str], crop_size: int, attrs: dict, *,
                 compression: str = DEFAULT_COMPRESSION, group: int = 8):
        self.path = Path(path)
        names = [str(c) for c in camera_names]
        if not names or any(not c for c in names) or len(set(names)) != len(names):
            raise ShardError(f"{self.path}: camera names must be non-empty and unique (got {names})")
        if int(crop_size) != crop_size or crop_size < 1:
            raise ShardError(f"{self.path}: crop size must be a positive integer (got {crop_size!r})")
        if compression not in COMPRESSIONS:
            raise ShardError(f"{self.path}: unknown crop compression {compression!r} "
                             f"(choose from {', '.join(COMPRESSIONS)})")
        self.camera_names = names
        self.num_views = len(names)
        self.crop_size = int(crop_size)
        self.compression = compression
        self.group = max(1, int(group))
        self._attrs = self._check_attrs(dict(attrs))
        self._tmp: Optional[Path] = None
        self._h5: Optional[h5py.File] = None
        self._buffer: list[ShardSample] = []
        self._count = 0  # samples accepted so far (written + buffered)
        self._written = 0
        self._frame_ids: set[str] = set()
        self._gt_present: Optional[dict[str, bool]] = None

    # -- attributes
    def _check_attrs(self, attrs: dict) -> dict:
        where = str(self.path)
        owned = sorted(set(attrs) & set(_WRITER_ATTRS))
        if owned:
            raise ShardError(f"{where}: attribute(s) {owned} are set by the shard writer, not the caller")
        unknown = sorted(set(attrs) - set(_REQUIRED_ATTRS) - set(_OPTIONAL_ATTRS))
        if unknown:
            raise ShardError(f"{where}: unknown shard attribute(s) {unknown}; put extra provenance in "
                             f"attrs['provenance'] (a dict)")
        missing = [k for k in _REQUIRED_ATTRS if attrs.get(k) in (None, "")]
        if missing:
            raise ShardError(f"{where}: missing shard attribute(s) {missing}")
        if attrs["handedness"] not in _HANDEDNESS:
            raise ShardError(f"{where}: handedness must be 'right' or 'left' (got {attrs['handedness']!r})")
        if attrs.get("code_version") in (None, ""):
            from .provenance import code_version

            attrs["code_version"] = code_version()
        attrs.setdefault("weights_sha256", "")
        out = {}
        for key in _REQUIRED_ATTRS + ("code_version", "weights_sha256"):
            out[key] = str(attrs[key])
        for key in _JSON_ATTRS:
            value = attrs.get(key) or {}
            if not isinstance(value, dict):
                raise ShardError(f"{where}: attrs[{key!r}] must be a dict (got {type(value).__name__})")
            try:
                out[key] = json.dumps(value, sort_keys=True, default=_json_default)
            except (TypeError, ValueError) as exc:
                raise ShardError(f"{where}: attrs[{key!r}] is not JSON-serialisable: {exc}") from None
        return out

    # -- context manager
    def __enter__(self) -> "ShardWriter":
        if self._h5 is not None:
            raise RuntimeError("ShardWriter is already open")
        try:
            self._tmp = new_temporary(self.path)
        except OSError as exc:
            raise ShardError(f"{self.path}: cannot create the shard: {exc.strerror or exc}") from None
        try:
            self._h5 = h5py.File(self._tmp, "w")
            self._create_datasets()
        except BaseException:
            self._abort()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._abort()
            return False
        try:
            self._finish()
        except BaseException as err:
            self._abort()
            if isinstance(err, OSError):
                raise ShardError(f"{self.path}: cannot write the shard: {err}") from None
            raise
        return False

    def _create_datasets(self) -> None:
        f, V, S = self._h5, self.num_views, self.crop_size
        for name, (dtype, template) in _FIELDS.items():
            self._create(name, dtype, _shape(template, V, S))
        f.create_dataset("frame_ids", shape=(0,), maxshape=(None,), chunks=(256,),
                         dtype=h5py.string_dtype("utf-8"), track_times=False)
        f.create_dataset("camera_names", data=np.array(self.camera_names, dtype=object),
                         dtype=h5py.string_dtype("utf-8"), track_times=False)

    def _create(self, name: str, dtype, shape: tuple) -> None:
        if name == "crops":
            chunks, extra = (1,) + shape, COMPRESSIONS[self.compression]
        else:
            per_sample = int(np.prod(shape)) * np.dtype(dtype).itemsize
            chunks, extra = (max(1, min(1024, _META_CHUNK_BYTES // max(per_sample, 1))),) + shape, {}
        self._h5.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dtype, chunks=chunks,
                                track_times=False, **extra)

    # -- samples
    def add(self, sample: ShardSample) -> None:
        """Validate one sample and queue it for writing (written in groups of ``group``)."""
        if self._h5 is None:
            raise RuntimeError("use ShardWriter as a context manager: `with ShardWriter(...) as w: w.add(s)`")
        self._buffer.append(self._validate(sample))
        self._count += 1
        if len(self._buffer) >= self.group:
            self._flush()
        fault_point("shard-sample", self.path.name)

    def __len__(self) -> int:
        return self._count

    def _validate(self, sample: ShardSample) -> ShardSample:
        index = self._count
        fid = sample.frame_id
        if not isinstance(fid, str) or not fid:
            raise ShardError(f"{self.path}: sample {index}: frame_id must be a non-empty string (got {fid!r})")
        where = f"{self.path}: sample {index} (frame {fid!r})"
        if fid in self._frame_ids:
            raise ShardError(f"{where}: frame id already in this shard")
        present = {name: getattr(sample, name) is not None for name in _OPTIONAL_FIELDS}
        boot = [present[n] for n in _BOOTSTRAP_FIELDS]
        if any(boot) and not all(boot):
            raise ShardError(f"{where}: bootstrapped-label fields {sorted(n for n in _BOOTSTRAP_FIELDS if not present[n])} "
                             f"missing; a sample has all of {sorted(_BOOTSTRAP_FIELDS)} or none")
        if self._gt_present is None:
            self._gt_present = present
            for name, (dtype, template) in _OPTIONAL_FIELDS.items():
                if present[name]:
                    self._create(name, dtype, _shape(template, self.num_views, self.crop_size))
        elif present != self._gt_present:
            diff = sorted(n for n in present if present[n] != self._gt_present[n])
            group = next(g for g, fields in _OPTIONAL_GROUPS.items() if diff[0] in fields)
            raise ShardError(f"{where}: {group} field(s) {diff} present in some samples of the shard but "
                             f"not in others; a shard has them for all its samples or none")
        values = {}
        for name, (dtype, template) in _ALL_FIELDS.items():
            value = getattr(sample, name)
            if value is None:
                if name in _OPTIONAL_FIELDS:
                    values[name] = None
                    continue
                raise ShardError(f"{where}: field {name} is missing")
            arr = np.asarray(value)
            expected = _shape(template, self.num_views, self.crop_size)
            if arr.shape != expected:
                raise ShardError(f"{where}: {name} has shape {arr.shape}, expected {expected}")
            if name == "crops":
                if arr.dtype != np.uint8:
                    raise ShardError(f"{where}: crops must be uint8 RGB (got {arr.dtype})")
            elif dtype is np.bool_:
                if arr.dtype.kind not in "biu":
                    raise ShardError(f"{where}: {name} must be boolean (got {arr.dtype})")
                arr = arr.astype(np.bool_, copy=False)
            else:
                if arr.dtype.kind not in "fiu":
                    raise ShardError(f"{where}: {name} must be numeric (got {arr.dtype})")
                arr = arr.astype(dtype, copy=False)
            values[name] = arr
        self._frame_ids.add(fid)
        return ShardSample(frame_id=fid, **values)

    def _flush(self) -> None:
        if not self._buffer:
            return
        f, n, k = self._h5, self._written, len(self._buffer)
        for name in _ALL_FIELDS:
            if name in _OPTIONAL_FIELDS and not self._gt_present[name]:
                continue
            ds = f[name]
            ds.resize(n + k, axis=0)
            ds[n:n + k] = np.stack([getattr(s, name) for s in self._buffer])
        ds = f["frame_ids"]
        ds.resize(n + k, axis=0)
        ds[n:n + k] = np.array([s.frame_id for s in self._buffer], dtype=object)
        self._written += k
        self._buffer.clear()

    # -- finishing
    def _finish(self) -> None:
        self._flush()
        f = self._h5
        a = f.attrs
        a["schema"] = SHARD_SCHEMA
        a["schema_version"] = np.int64(SHARD_SCHEMA_VERSION)
        a["created"] = _utc_now()
        for key in ("code_version", "labeler", "labeler_params", "weights_sha256", "source_capture",
                    "capture_hash", "handedness", "provenance"):
            a[key] = self._attrs[key]
        a["crop_size"] = np.int64(self.crop_size)
        a["num_views"] = np.int64(self.num_views)
        a["num_samples"] = np.int64(self._written)  # last: a shard without it was never finished
        self._h5 = None
        f.close()
        commit(self._tmp, self.path)  # fsync, rename, fsync the directory
        self._tmp = None

    def _abort(self) -> None:
        self._buffer.clear()
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:
                pass
            self._h5 = None
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except FileNotFoundError:
                pass
            self._tmp = None


# ----------------------------------------------------------------------------- reader

def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise ShardError(f"{path}: no such shard file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ShardError(f"{path}: cannot open the shard, the file is truncated or corrupt ({exc}); "
                         "delete it and regenerate it") from None


def _check_schema(path: Path, f: h5py.File) -> None:
    try:
        schema = _plain(f.attrs.get("schema"))
        version = _plain(f.attrs.get("schema_version"))
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable shard attributes, the file is corrupt ({exc})") from None
    if schema is None:
        raise ShardError(f"{path}: not a finished hamuco shard (no 'schema' attribute: an interrupted write or "
                         "another kind of HDF5 file)")
    if schema != SHARD_SCHEMA:
        raise ShardError(f"{path}: not a hamuco shard (schema {schema!r}, expected {SHARD_SCHEMA!r})")
    if version != SHARD_SCHEMA_VERSION:
        raise ShardError(f"{path}: shard schema version {version}, this reader reads version "
                         f"{SHARD_SCHEMA_VERSION}; regenerate the shard or use a matching release")


def _read_attrs(path: Path, f: h5py.File) -> dict:
    try:
        attrs = {key: _plain(f.attrs[key]) for key in f.attrs}
    except (OSError, RuntimeError, TypeError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable shard attributes, the file is corrupt ({exc})") from None
    for key in _JSON_ATTRS:
        if key in attrs:
            try:
                attrs[key] = json.loads(attrs[key])
            except (TypeError, ValueError) as exc:
                raise ShardError(f"{path}: attribute {key!r} is not valid JSON ({exc})") from None
    return attrs


def _structure(path: Path, f: h5py.File) -> dict:
    """Check dataset presence, shapes and lengths; return the layout (views, size, samples, gt fields)."""
    problems = []
    for key in ("num_samples", "num_views", "crop_size"):
        if key not in f.attrs:
            problems.append(f"attribute {key!r} missing")
    missing = [n for n in list(_FIELDS) + ["frame_ids", "camera_names"] if n not in f]
    if missing:
        problems.append(f"dataset(s) {missing} missing")
    if problems:
        raise ShardError(f"{path}: incomplete shard: {'; '.join(problems)}")
    try:
        N, V, S = (int(f.attrs[k]) for k in ("num_samples", "num_views", "crop_size"))
        shapes = {n: f[n].shape for n in f if isinstance(f[n], h5py.Dataset)}
        dtypes = {n: f[n].dtype for n in f if isinstance(f[n], h5py.Dataset)}
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{path}: unreadable shard structure, the file is corrupt ({exc})") from None
    if shapes["camera_names"] != (V,):
        problems.append(f"camera_names has shape {shapes['camera_names']}, expected ({V},)")
    if shapes["frame_ids"] != (N,):
        problems.append(f"frame_ids has {shapes['frame_ids'][0] if shapes['frame_ids'] else '?'} entries, "
                        f"expected {N}")
    gt = [n for n in _GT_FIELDS if n in f]
    boot = [n for n in _BOOTSTRAP_FIELDS if n in f]
    if boot and len(boot) != len(_BOOTSTRAP_FIELDS):
        problems.append(f"bootstrapped-label dataset(s) {sorted(set(_BOOTSTRAP_FIELDS) - set(boot))} missing")
    for name in list(_FIELDS) + gt + boot:
        dtype, template = _ALL_FIELDS[name]
        expected = (N,) + _shape(template, V, S)
        got = shapes.get(name)
        if name == "extrinsics_known" and got == (V,):
            pass
        elif got != expected:
            problems.append(f"{name} has shape {got}, expected {expected}")
        if dtypes.get(name) is not None and dtypes[name] != np.dtype(dtype):
            problems.append(f"{name} has dtype {dtypes[name]}, expected {np.dtype(dtype)}")
    if problems:
        raise ShardError(f"{path}: inconsistent shard: {'; '.join(problems)}")
    return {"samples": N, "views": V, "size": S, "gt": gt, "bootstrapped": bool(boot),
            "ext_known_per_sample": shapes["extrinsics_known"] == (N, V)}


class ShardReader:
    """Reads a shard written by :class:`ShardWriter`.

    ``len(r)``, ``r[i] -> ShardSample`` (negative indices allowed), iteration, ``r.read_crops(i)`` (the
    fast path: the (V, S, S, 3) uint8 RGB crops only), ``r.attrs`` (root attributes, with
    ``labeler_params`` and ``provenance`` parsed from JSON), ``r.camera_names``, ``r.num_views``,
    ``r.crop_size``, ``r.ground_truth_fields``, ``r.has_bootstrapped_labels``; ``close()`` or use as a context manager.

    The constructor checks the schema name and version and the datasets' shapes, and raises
    :class:`ShardError` for an unreadable, truncated, incomplete or foreign file. The HDF5 file is
    opened per process: a reader used in a parent keeps working in a forked child (the child opens its
    own handle on first access), and pickling sends only the path (``spawn`` DataLoader workers).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._h5: Optional[h5py.File] = None
        self._pid: Optional[int] = None
        self._ds: dict[str, h5py.Dataset] = {}
        f = self._file()
        _check_schema(self.path, f)
        self.attrs: dict = _read_attrs(self.path, f)
        layout = _structure(self.path, f)
        self._len = layout["samples"]
        self.num_views = layout["views"]
        self.crop_size = layout["size"]
        self.ground_truth_fields: list[str] = layout["gt"]
        self.has_bootstrapped_labels: bool = layout["bootstrapped"]
        self._ext_known_per_sample = layout["ext_known_per_sample"]
        try:
            self.camera_names: list[str] = [str(c) for c in f["camera_names"].asstr()[()]]
        except (OSError, RuntimeError, ValueError) as exc:
            raise ShardError(f"{self.path}: unreadable camera_names, the file is corrupt ({exc})") from None

    # -- per-process handle
    def _file(self) -> h5py.File:
        pid = os.getpid()
        if self._h5 is None or self._pid != pid:
            old, self._h5, self._ds = self._h5, None, {}
            if old is not None:  # a handle inherited through fork: release this process's copy of it
                try:
                    old.close()
                except Exception:
                    pass
            self._h5 = _open_h5(self.path)
            self._pid = pid
        return self._h5

    def _dataset(self, name: str) -> h5py.Dataset:
        f = self._file()
        ds = self._ds.get(name)
        if ds is None:
            ds = self._ds[name] = f[name]
        return ds

    def field(self, name: str) -> np.ndarray:
        """A whole per-sample dataset (e.g. ``view_valid``) without reading crops."""
        try:
            return self._dataset(name)[...]
        except KeyError:
            raise ShardError(f"{self.path}: no dataset {name!r}") from None

    def close(self) -> None:
        if self._h5 is not None:
            if self._pid == os.getpid():
                try:
                    self._h5.close()
                except Exception:
                    pass
            self._h5, self._ds = None, {}

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_h5=None, _pid=None, _ds={})
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"ShardReader({str(self.path)!r}, samples={self._len}, views={self.num_views})"

    # -- samples
    def __len__(self) -> int:
        return self._len

    def _index(self, i) -> int:
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise TypeError(f"shard indices are integers, not {type(i).__name__}") from None
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"{self.path}: sample {i} out of range (the shard has {self._len} samples)")
        return i

    def __iter__(self) -> Iterator[ShardSample]:
        for i in range(self._len):
            yield self[i]

    def frame_id(self, i: int) -> str:
        i = self._index(i)
        try:
            return str(self._dataset("frame_ids").asstr()[i])
        except (OSError, RuntimeError, ValueError) as exc:
            raise ShardError(f"{self.path}: cannot read sample {i}, the file is corrupt ({exc})") from None

    def read_crops(self, i: int, out: Optional[np.ndarray] = None) -> np.ndarray:
        """The (V, S, S, 3) uint8 RGB crops of sample ``i`` (into ``out`` when given, C-contiguous)."""
        i = self._index(i)
        V, S = self.num_views, self.crop_size
        if out is None:
            out = np.empty((V, S, S, 3), np.uint8)
        elif out.shape != (V, S, S, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {(V, S, S, 3)}")
        try:
            self._dataset("crops").read_direct(out, np.s_[i], np.s_[...])
        except (OSError, RuntimeError, ValueError) as exc:
            raise ShardError(f"{self.path}: cannot read the crops of sample {i}, the file is corrupt "
                             f"({exc})") from None
        return out

    def __getitem__(self, i) -> ShardSample:
        i = self._index(i)
        values: dict[str, Any] = {}
        try:
            values["frame_id"] = str(self._dataset("frame_ids").asstr()[i])
            for name in _FIELDS:
                if name == "crops":
                    values[name] = self.read_crops(i)
                elif name == "extrinsics_known" and not self._ext_known_per_sample:
                    values[name] = self._dataset(name)[()].copy()
                else:
                    values[name] = self._dataset(name)[i]
            for name in self.ground_truth_fields + (list(_BOOTSTRAP_FIELDS) if self.has_bootstrapped_labels else []):
                values[name] = self._dataset(name)[i]
        except ShardError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            fid = values.get("frame_id")
            which = f"sample {i}" + (f" (frame {fid!r})" if fid else "")
            raise ShardError(f"{self.path}: cannot read {which}, the file is corrupt ({exc})") from None
        return ShardSample(**values)


# ----------------------------------------------------------------------------- inspection

def verify_shard(path, deep: bool = False) -> None:
    """Raise :class:`ShardError` unless ``path`` is a complete shard of this schema version.

    Checks the schema attributes, that every dataset is present with the shape the attributes imply
    and that all per-sample datasets have the same length. ``deep=True`` also reads every sample
    (catches corrupt chunks, at the cost of reading the whole file).
    """
    with ShardReader(path) as reader:
        if deep:
            for i in range(len(reader)):
                reader[i]


def _mean(total: float, count: int) -> float:
    return total / count if count else math.nan


def inspect_shard(path, block: int = 4096) -> dict:
    """Schema version, attributes, sizes and label statistics of a shard (for ``hamuco shards inspect``).

    ``statistics``: ``valid_views``, ``recovered_views``, ``flipped_views`` (fractions of all views);
    ``mean_confidence``, ``mean_refined_confidence`` and ``zero_confidence_joints`` (fraction of
    joints with confidence 0) over the joints of valid views (NaN when no view is valid); and
    ``per_camera`` (valid fraction and mean confidence per camera). The crops are not read.
    """
    with ShardReader(path) as r:
        N, V = len(r), r.num_views
        n_views = N * V
        valid = recovered = flipped = 0
        conf_sum = refined_sum = zero = 0.0
        cam_valid = np.zeros(V, np.int64)
        cam_conf = np.zeros(V)
        try:
            ds = {n: r._dataset(n) for n in ("view_valid", "recovered", "flipped", "confidence",
                                             "refined_confidence")}
            crops = r._dataset("crops")
            compression = crops.compression or "none"
            if compression == "gzip":
                compression = f"gzip{crops.compression_opts}"
            for lo in range(0, N, block):
                hi = min(N, lo + block)
                vv = ds["view_valid"][lo:hi]
                recovered += int(ds["recovered"][lo:hi].sum())
                flipped += int(ds["flipped"][lo:hi].sum())
                conf = ds["confidence"][lo:hi]
                refined = ds["refined_confidence"][lo:hi]
                valid += int(vv.sum())
                conf_sum += float(conf[vv].sum(dtype=np.float64))
                refined_sum += float(refined[vv].sum(dtype=np.float64))
                zero += int((conf[vv] == 0).sum())
                cam_valid += vv.sum(0)
                cam_conf += np.where(vv[..., None], conf, 0).sum((0, 2), dtype=np.float64)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ShardError(f"{r.path}: cannot read the labels, the file is corrupt ({exc})") from None
        joints = valid * NUM_JOINTS
        stats = {
            "valid_views": _mean(valid, n_views),
            "recovered_views": _mean(recovered, n_views),
            "flipped_views": _mean(flipped, n_views),
            "mean_confidence": _mean(conf_sum, joints),
            "mean_refined_confidence": _mean(refined_sum, joints),
            "zero_confidence_joints": _mean(zero, joints),
            "per_camera": {name: {"valid_views": _mean(int(cam_valid[c]), N),
                                  "mean_confidence": _mean(float(cam_conf[c]), int(cam_valid[c]) * NUM_JOINTS)}
                           for c, name in enumerate(r.camera_names)},
        }
        return {
            "path": str(r.path),
            "file_size_bytes": r.path.stat().st_size,
            "schema": r.attrs.get("schema"),
            "schema_version": r.attrs.get("schema_version"),
            "samples": N,
            "views": V,
            "crop_size": r.crop_size,
            "camera_names": list(r.camera_names),
            "ground_truth": list(r.ground_truth_fields),
            "bootstrapped_labels": r.has_bootstrapped_labels,
            "crops_compression": compression,
            "attrs": dict(r.attrs),
            "statistics": stats,
        }
