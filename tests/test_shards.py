"""HDF5 shard schema v1: round trips, attributes, refusals, atomic writes under exceptions and SIGKILL,
reading in forked children, inspection and verification. Real h5py files, small crops."""
import json
import multiprocessing as mp
import os
import pickle
import random
import signal
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from model.errors import HamucoError
from pipeline.shards import (SHARD_SCHEMA_VERSION, ShardError, ShardReader, ShardSample, ShardWriter, inspect_shard,
                             verify_shard)

CAMS = ["cam00", "cam01", "cam02"]
V, S, J = len(CAMS), 32, 21
ATTRS = {"code_version": "0.1.0+gtest", "labeler": "mediapipe", "labeler_params": {"complexity": 1, "min": 0.5},
         "weights_sha256": "ab" * 32, "source_capture": "/data/captures/c1", "capture_hash": "f00d" * 16,
         "handedness": "right", "provenance": {"shard": 3, "frames": [0, 8], "detector": {"margin": 0.3}}}


def random_sample(rng: np.random.Generator, n: int, gt: bool = True) -> ShardSample:
    crop_K = rng.normal(size=(V, 3, 3))
    crop_K[1] = np.nan  # unknown intrinsics
    tri = rng.normal(size=(J, 3)).astype(np.float32)
    if n % 2:
        tri[:] = np.nan
    return ShardSample(
        frame_id=f"frame-{n:05d}-é", crops=rng.integers(0, 256, (V, S, S, 3), dtype=np.uint8),
        keypoints=rng.uniform(0, S, (V, J, 2)).astype(np.float32),
        confidence=rng.random((V, J), dtype=np.float32), refined_confidence=rng.random((V, J), dtype=np.float32),
        view_valid=rng.random(V) > 0.3, recovered=rng.random(V) > 0.7, flipped=rng.random(V) > 0.5,
        crop_affine=rng.normal(size=(V, 2, 3)), crop_K=crop_K, extrinsics=rng.normal(size=(V, 3, 4)),
        extrinsics_known=np.array([True, False, True]), triangulated=tri,
        reprojection_error=np.where(rng.random((V, J)) > 0.2, rng.random((V, J)), np.nan).astype(np.float32),
        gt_joints_world=rng.normal(size=(J, 3)).astype(np.float32) if gt else None,
        gt_joints_2d=rng.uniform(0, S, (V, J, 2)).astype(np.float32) if gt else None,
        gt_visibility=(rng.random((V, J)) > 0.2) if gt else None)


def write_shard(path, samples, attrs=ATTRS, **kw) -> Path:
    with ShardWriter(path, CAMS, S, attrs, **kw) as w:
        for s in samples:
            w.add(s)
    return Path(path)


def make_samples(n, gt=True, seed=0):
    rng = np.random.default_rng(seed)
    return [random_sample(rng, i, gt) for i in range(n)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("gt", [True, False])
def test_round_trip_is_exact(tmp_path, gt):
    samples = make_samples(11, gt=gt)  # 11: more than one write group, a partial last group
    path = write_shard(tmp_path / "s.h5", samples)
    assert leftovers(tmp_path) == ["s.h5"]
    verify_shard(path, deep=True)
    with ShardReader(path) as r:
        assert len(r) == 11 and r.num_views == V and r.crop_size == S and r.camera_names == CAMS
        assert r.ground_truth_fields == (["gt_joints_world", "gt_joints_2d", "gt_visibility"] if gt else [])
        for i, s in enumerate(samples):
            back = r[i]
            assert back.equals(s), i
            assert back.crops.dtype == np.uint8 and back.keypoints.dtype == np.float32
            assert back.view_valid.dtype == np.bool_ and back.crop_affine.dtype == np.float64
            assert np.array_equal(r.read_crops(i), s.crops)
        assert r[-1].equals(samples[-1])
        assert [x.frame_id for x in r] == [s.frame_id for s in samples]
        with pytest.raises(IndexError):
            r[11]


def test_attrs_round_trip(tmp_path):
    before = datetime.now().astimezone()
    path = write_shard(tmp_path / "s.h5", make_samples(2))
    with ShardReader(path) as r:
        a = r.attrs
    assert a["schema"] == "hamuco-shard" and a["schema_version"] == SHARD_SCHEMA_VERSION == 1
    for key in ("code_version", "labeler", "weights_sha256", "source_capture", "capture_hash", "handedness"):
        assert a[key] == ATTRS[key]
    assert a["labeler_params"] == ATTRS["labeler_params"] and a["provenance"] == ATTRS["provenance"]
    assert a["crop_size"] == S and a["num_views"] == V and a["num_samples"] == 2
    created = datetime.fromisoformat(a["created"].replace("Z", "+00:00"))
    assert created.utcoffset().total_seconds() == 0 and abs((created - before).total_seconds()) < 60


def test_defaults_and_numpy_in_json_attrs(tmp_path):
    attrs = {k: ATTRS[k] for k in ("labeler", "source_capture", "capture_hash", "handedness")}
    attrs["labeler_params"] = {"threshold": np.float32(0.5), "size": np.int64(3), "path": tmp_path}
    path = write_shard(tmp_path / "s.h5", make_samples(1), attrs)
    with ShardReader(path) as r:
        assert r.attrs["code_version"]  # this checkout's version
        assert r.attrs["weights_sha256"] == "" and r.attrs["provenance"] == {}
        assert r.attrs["labeler_params"] == {"threshold": 0.5, "size": 3, "path": str(tmp_path)}


def test_writing_twice_gives_identical_datasets(tmp_path):
    samples = make_samples(5)
    a, b = write_shard(tmp_path / "a.h5", samples), write_shard(tmp_path / "b.h5", samples)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            da, db = fa[name], fb[name]
            assert (da.dtype, da.shape, da.chunks, da.compression) == (db.dtype, db.shape, db.chunks, db.compression)
            assert np.array_equal(da[()], db[()], equal_nan=da.dtype.kind == "f"), name
        attrs_a = {k: v for k, v in fa.attrs.items() if k != "created"}
        attrs_b = {k: v for k, v in fb.attrs.items() if k != "created"}
        assert attrs_a == attrs_b


def test_empty_shard_and_extrinsics_known_per_shard(tmp_path):
    path = write_shard(tmp_path / "empty.h5", [])
    verify_shard(path)
    with ShardReader(path) as r:
        assert len(r) == 0 and list(r) == []
    # the schema also allows extrinsics_known of shape (V,), one flag per camera for the whole shard
    samples = make_samples(3)
    path = write_shard(tmp_path / "s.h5", samples)
    with h5py.File(path, "r+") as f:
        del f["extrinsics_known"]
        f["extrinsics_known"] = np.array([False, True, True])
    verify_shard(path)
    with ShardReader(path) as r:
        assert np.array_equal(r[2].extrinsics_known, [False, True, True])


@pytest.mark.parametrize("compression", ["lzf", "gzip1"])
def test_other_compressions_read_back(tmp_path, compression):
    samples = make_samples(3)
    path = write_shard(tmp_path / "s.h5", samples, compression=compression)
    with ShardReader(path) as r:
        assert all(r[i].equals(s) for i, s in enumerate(samples))
    assert inspect_shard(path)["crops_compression"] == compression


# ----------------------------------------------------------------------------- refusals

def test_schema_version_refused(tmp_path):
    path = write_shard(tmp_path / "x.h5", make_samples(1))
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 2
    for call in (ShardReader, verify_shard, inspect_shard):
        with pytest.raises(ShardError) as err:
            call(path)
        assert str(err.value) == (f"{path}: shard schema version 2, this reader reads version 1; "
                                  "regenerate the shard or use a matching release")


def test_wrong_schema_name_refused(tmp_path):
    path = write_shard(tmp_path / "x.h5", make_samples(1))
    with h5py.File(path, "r+") as f:
        f.attrs["schema"] = "someone-elses-shard"
    with pytest.raises(ShardError, match="not a hamuco shard.*someone-elses-shard") as err:
        ShardReader(path)
    assert str(path) in str(err.value)
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ShardError, match="no 'schema' attribute") as err:
        verify_shard(plain)
    assert str(plain) in str(err.value)


def test_truncated_or_corrupt_file_is_a_shard_error(tmp_path):
    path = write_shard(tmp_path / "t.h5", make_samples(4))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    for call in (ShardReader, verify_shard, inspect_shard):
        with pytest.raises(ShardError) as err:
            call(path)
        assert isinstance(err.value, HamucoError)
        assert str(path) in str(err.value) and "truncated or corrupt" in str(err.value)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(ShardError, match="junk.h5"):
        ShardReader(junk)
    with pytest.raises(ShardError, match="no such shard file"):
        ShardReader(tmp_path / "missing.h5")


def test_corrupt_chunk_names_file_and_sample(tmp_path):
    path = write_shard(tmp_path / "c.h5", make_samples(4), compression="gzip1")
    with h5py.File(path, "r") as f:
        offset = f["crops"].id.get_chunk_info(2).byte_offset
    with open(path, "r+b") as fh:  # scribble over sample 2's compressed crops
        fh.seek(offset)
        fh.write(b"\xff" * 64)
    verify_shard(path)  # structure intact
    with pytest.raises(ShardError, match=r"c\.h5: cannot read .*sample 2"):
        verify_shard(path, deep=True)
    with ShardReader(path) as r:
        assert r[1].frame_id == "frame-00001-é"
        with pytest.raises(ShardError, match=r"c\.h5: cannot read the crops of sample 2"):
            r.read_crops(2)


def test_inconsistent_lengths_refused(tmp_path):
    path = write_shard(tmp_path / "l.h5", make_samples(4))
    with h5py.File(path, "r+") as f:
        f["keypoints"].resize(3, axis=0)
    with pytest.raises(ShardError, match=r"l\.h5: inconsistent shard: keypoints has shape \(3, 3, 21, 2\), "
                                         r"expected \(4, 3, 21, 2\)"):
        verify_shard(path)
    with h5py.File(path, "r+") as f:
        del f["confidence"]
    with pytest.raises(ShardError, match=r"l\.h5: incomplete shard: .*confidence"):
        verify_shard(path)


def test_bad_samples_are_refused_with_file_and_frame(tmp_path):
    path = tmp_path / "bad.h5"
    good = make_samples(2)
    cases = [
        (dict(keypoints=np.zeros((V, 20, 2), np.float32)), r"sample 0 \(frame 'frame-00000-é'\): keypoints has shape"),
        (dict(crops=good[0].crops.astype(np.float32)), "crops must be uint8"),
        (dict(view_valid=np.full(V, 0.5)), "view_valid must be boolean"),
    ]
    for change, message in cases:
        bad = ShardSample(**{**good[0].__dict__, **change})
        with pytest.raises(ShardError, match=message) as err:
            write_shard(path, [bad])
        assert str(path) in str(err.value)
        assert leftovers(tmp_path) == []
    no_gt = ShardSample(**{**good[1].__dict__, "gt_visibility": None})
    with pytest.raises(ShardError, match=r"sample 1 .*\['gt_visibility'\] present in some samples"):
        write_shard(path, [good[0], no_gt])
    with pytest.raises(ShardError, match="frame id already in this shard"):
        write_shard(path, [good[0], good[0]])
    with pytest.raises(ShardError, match="handedness"):
        ShardWriter(path, CAMS, S, {**ATTRS, "handedness": "both"})
    with pytest.raises(ShardError, match="unknown shard attribute"):
        ShardWriter(path, CAMS, S, {**ATTRS, "extra": 1})
    with pytest.raises(ShardError, match="missing shard attribute"):
        ShardWriter(path, CAMS, S, {k: v for k, v in ATTRS.items() if k != "capture_hash"})
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- atomic writes

def test_exception_inside_writer_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError, match="labeler crashed"):
        with ShardWriter(path, CAMS, S, ATTRS) as w:
            for i, s in enumerate(make_samples(12)):
                w.add(s)
                if i == 9:
                    assert len(leftovers(tmp_path)) == 1  # the temporary file, not the shard
                    raise RuntimeError("labeler crashed")
    assert leftovers(tmp_path) == []
    # an existing shard at the path survives a failed rewrite untouched
    samples = make_samples(2)
    write_shard(path, samples)
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(path, CAMS, S, ATTRS) as w:
            w.add(make_samples(1, seed=5)[0])
            raise KeyboardInterrupt
    assert leftovers(tmp_path) == ["s.h5"]
    with ShardReader(path) as r:
        assert len(r) == 2 and r[0].equals(samples[0])


def _slow_writer(path: str, n: int, progress) -> None:
    samples = make_samples(n, seed=1)
    with ShardWriter(path, CAMS, S, ATTRS, group=2) as w:
        for s in samples:
            w.add(s)
            with progress.get_lock():
                progress.value += 1
            time.sleep(0.004)
    os._exit(0)


def test_sigkill_mid_write_never_leaves_an_incomplete_shard(tmp_path):
    ctx = mp.get_context("fork")
    rng = random.Random(20240601)
    n, outcomes = 40, []
    for trial in range(8):
        path = tmp_path / f"shard-{trial}.h5"
        progress = ctx.Value("i", 0)
        proc = ctx.Process(target=_slow_writer, args=(str(path), n, progress))
        proc.start()
        kill_after = rng.randint(0, n)  # samples added before the kill (n: during or after finishing)
        deadline = time.monotonic() + 30
        while progress.value < kill_after and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.004))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode in (0, -signal.SIGKILL)
        if path.exists():
            verify_shard(path, deep=True)  # anything at the final path is complete
            with ShardReader(path) as r:
                assert len(r) == n
            outcomes.append("complete")
        else:
            outcomes.append(f"none after {progress.value}")
        for tmp in tmp_path.glob(f".{path.name}.*.tmp"):  # stale temporary files are never accepted
            with pytest.raises(ShardError):
                verify_shard(tmp)
            tmp.unlink()
    print("kill outcomes:", outcomes)
    assert any(o.startswith("none") for o in outcomes), outcomes


# ----------------------------------------------------------------------------- fork / workers

def _child_reads(reader: ShardReader, expected: list, conn) -> None:
    try:
        order = random.sample(range(len(expected)), len(expected))
        ok = all(reader[i].equals(expected[i]) for i in order)
        conn.send(bool(ok and reader._pid == os.getpid()))  # the child opened its own handle
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(repr(exc))
    conn.close()
    os._exit(0)


def test_reader_works_in_forked_children_after_use_in_parent(tmp_path):
    samples = make_samples(6)
    path = write_shard(tmp_path / "s.h5", samples)
    reader = ShardReader(path)
    assert reader[0].equals(samples[0]) and reader._pid == os.getpid()
    ctx = mp.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    children = [ctx.Process(target=_child_reads, args=(reader, samples, send)) for _, send in pipes]
    for c in children:
        c.start()
    answers = [recv.recv() if recv.poll(60) else "no answer" for recv, _ in pipes]
    for c in children:
        c.join(10)
    assert answers == [True, True]
    assert reader[5].equals(samples[5]) and reader._pid == os.getpid()  # the parent still reads
    clone = pickle.loads(pickle.dumps(reader))  # spawn-style workers get the path only
    assert clone._h5 is None and clone[3].equals(samples[3])
    clone.close()
    reader.close()


# ----------------------------------------------------------------------------- inspection

def test_inspect_shard_statistics(tmp_path):
    samples = make_samples(2, gt=False)
    for s in samples:
        s.view_valid[:] = [True, True, False]
        s.recovered[:] = [False, True, False]
        s.flipped[:] = [True, False, False]
        s.confidence[:] = 0.5
        s.confidence[0, :7] = 0.0
        s.refined_confidence[:] = 0.25
        s.confidence[2] = 0.9  # an invalid view: not counted in the confidence statistics
    path = write_shard(tmp_path / "i.h5", samples)
    info = inspect_shard(path)
    assert info["schema_version"] == 1 and info["samples"] == 2 and info["views"] == V
    assert info["crop_size"] == S and info["camera_names"] == CAMS and info["ground_truth"] == []
    assert info["attrs"]["labeler_params"] == ATTRS["labeler_params"]
    st = info["statistics"]
    assert st["valid_views"] == pytest.approx(2 / 3) and st["recovered_views"] == pytest.approx(1 / 3)
    assert st["flipped_views"] == pytest.approx(1 / 3)
    assert st["mean_confidence"] == pytest.approx((14 * 0.5 + 21 * 0.5) / 42)
    assert st["mean_refined_confidence"] == pytest.approx(0.25)
    assert st["zero_confidence_joints"] == pytest.approx(7 / 42)
    assert st["per_camera"]["cam02"]["valid_views"] == 0
    json.dumps(info)  # printable by `hamuco shards inspect`
