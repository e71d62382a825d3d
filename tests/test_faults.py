"""Kills at named points (``HAMUCO_FAULT``, model/atomic.py), reached on purpose whatever the load:
nothing at a final path is ever incomplete, the rerun completes with the same data as an uninterrupted
run, a resumed training ends bit-identical, and no temporary file is left behind."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.atomic import atomic_path, atomic_write_text, new_temporary, remove_stale_temporaries, temporary_name
from pipeline.shards import verify_shard
from tests.helpers import clean_env, run_cli, same_arrays, shard_arrays, temporaries

KILLED = -signal.SIGKILL


# ----------------------------------------------------------------------------- the temporaries themselves

def test_a_writer_removes_what_dead_writers_left_and_nothing_else(tmp_path):
    target = tmp_path / "out.json"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    host = temporary_name(target).split(".")[-3]
    stale = tmp_path / f".out.json.{host}.{dead.pid}.abc.tmp"
    stale.write_text("half")
    alive = tmp_path / f".out.json.{host}.{os.getppid()}.def.tmp"  # a live writer (our parent)
    alive.write_text("in progress")
    other_young = tmp_path / ".out.json.otherhost.123.ghi.tmp"
    other_young.write_text("another machine, now")
    other_old = tmp_path / ".out.json.otherhost.124.jkl.tmp"
    other_old.write_text("another machine, long ago")
    os.utime(other_old, (0, 0))
    unrelated = tmp_path / ".other.json.x.1.tmp"
    unrelated.write_text("another output")
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert not stale.exists() and not other_old.exists()
    assert alive.exists() and other_young.exists() and unrelated.exists()
    assert remove_stale_temporaries(target) == 0


def test_atomic_path_leaves_nothing_when_the_writer_raises(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not target.exists() and not temporaries(tmp_path)
    tmp = new_temporary(target)
    assert tmp.name.startswith(".x.bin.") and tmp.name.endswith(".tmp")


def test_fault_points_kill_and_fail_where_asked(tmp_path):
    code = ("from model.atomic import atomic_write_text, fault_point\n"
            "fault_point('task-start', 'Other')\n"
            "atomic_write_text('a.json', '1')\n"
            "atomic_write_text('b.json', '2')\n")
    run = lambda **env: subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(  # noqa: E731
        PYTHONPATH=str(Path(__file__).resolve().parent.parent), **env), capture_output=True, text=True)
    r = run(HAMUCO_FAULT="before-rename:b.json")
    assert r.returncode == KILLED and (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
    assert len(temporaries(tmp_path)) == 1  # b's finished temporary, never renamed
    r = run(HAMUCO_FAULT="before-rename@2")  # the second passage through the point
    assert r.returncode == KILLED and (tmp_path / "a.json").read_text() == "1"
    r = run(HAMUCO_FAIL="task-start:Other")
    assert r.returncode == 1 and "InjectedFailure: injected failure at task-start (Other)" in r.stderr
    r = run()
    assert r.returncode == 0 and (tmp_path / "b.json").read_text() == "2" and not temporaries(tmp_path)


# ----------------------------------------------------------------------------- data preparation

def _final_outputs_are_complete(root: Path) -> None:
    for h5 in root.rglob("*.h5"):
        verify_shard(h5, deep=True)
        shard_arrays(h5)  # every dataset read in full
    for js in root.rglob("*.json"):
        json.loads(js.read_text())


def _shards(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): shard_arrays(p) for p in sorted(root.rglob("shard-*.h5"))}


@pytest.fixture(scope="module")
def reference(small_capture, tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "reference"
    r = run_cli("prepare", small_capture.root, "--out", out, "--frames-per-shard", "1", "--crop-size", "64")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


PREPARE_FAULTS = [
    ("shard-sample:shard-00001", 1),  # mid-shard: samples written, file not closed
    ("before-rename:shard-00002.h5", 1),  # shard complete in its temporary, not renamed
    ("task-done:LabelShard@2", 1),  # between shards: two done, the third not started
    ("mid-write:shard-00000.quarantine.json", 1),  # a half-written JSON temporary
    ("mid-write:shard-00001.json", 1),  # detections half-written
    ("before-rename:dataset-", 1),  # everything done but the dataset index
    ("shard-sample:shard-00000", 2),  # two worker processes, the whole process group killed
]


@pytest.mark.parametrize("fault,workers", PREPARE_FAULTS)
def test_prepare_killed_at_a_named_point_reruns_to_the_same_shards(fault, workers, small_capture, reference,
                                                                   tmp_path):
    out = tmp_path / "out"
    args = ["prepare", small_capture.root, "--out", out, "--frames-per-shard", "1", "--crop-size", "64",
            "--workers", workers]
    env = clean_env(HAMUCO_FAULT=fault, HAMUCO_FAULT_LOG=str(tmp_path / "faults.log"))
    if workers > 1:
        env["HAMUCO_FAULT_KILL"] = "group"
    killed = run_cli(*args, env=env)
    assert killed.returncode == KILLED, (killed.returncode, killed.stderr[-2000:])
    assert (tmp_path / "faults.log").read_text().split("\t")[0] == fault.split(":")[0].split("@")[0]
    _final_outputs_are_complete(out)
    assert not list(out.glob("dataset-*.json"))  # nothing Luigi would take as a finished dataset
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _final_outputs_are_complete(out)
    ref, got = _shards(reference), _shards(out)
    assert sorted(ref) == sorted(got)
    for name in ref:
        assert not same_arrays(ref[name], got[name]), (name, same_arrays(ref[name], got[name]))
    assert not temporaries(out)


# ----------------------------------------------------------------------------- training

TRAIN = ["--backbone", "resnet18", "--steps", "4", "--batch-size", "1", "--checkpoint-every", "2"]


def _train(dataset, out, precision, env=None, resume=False):
    return run_cli("train", "--dataset", dataset, "--out", out, *TRAIN, "--precision", precision,
                   *(["--resume"] if resume else []), env=env)


def _final(out: Path) -> dict:
    (ckpt,) = out.glob("train-*/checkpoint-final.pt")
    return torch.load(ckpt, map_location="cpu", weights_only=True)


IGNORED = ("/provenance/params/out",)  # the output root the run was given: another directory per run


def _equal(a, b, path="") -> list[str]:
    """Paths (``/model/<key>``, ...) where two checkpoints differ, bit for bit."""
    if path in IGNORED:
        return []
    if isinstance(a, dict):
        keys = set(a) | set(b)
        return [d for k in sorted(keys, key=str) for d in
                ([f"{path}/{k} missing"] if k not in a or k not in b else _equal(a[k], b[k], f"{path}/{k}"))]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _equal(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [path]
    return [] if a == b else [path]


@pytest.fixture(scope="module")
def train_reference(tiny_dataset, tmp_path_factory):
    refs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path_factory.mktemp(f"train-ref-{precision}")
        r = _train(tiny_dataset, out, precision)
        assert r.returncode == 0, r.stderr[-2000:]
        refs[precision] = out
    return refs


# bench/chaos.py --quick (tests/test_chaos.py) kills fp32 training at "train-step@3" (after step 3, its
# checkpoint not written) and "mid-write:checkpoint-last.pt" (the first checkpoint half-written), resumed by
# the command and by Luigi, and compares the weights with an uninterrupted run's; these are the other points,
# and the one kill-and-resume in bf16
TRAIN_FAULTS = [
    ("fp32", "before-rename:checkpoint-last.pt@2"),  # the second checkpoint complete, not renamed
    ("fp32", "before-rename:checkpoint-final.pt"),
    ("bf16", "mid-write:checkpoint-last.pt@2"),  # the second checkpoint half-written
]


@pytest.mark.parametrize("precision,fault", TRAIN_FAULTS)
def test_training_killed_at_a_named_point_resumes_to_the_same_bits(precision, fault, tiny_dataset,
                                                                   train_reference, tmp_path):
    killed = _train(tiny_dataset, tmp_path, precision, env=clean_env(HAMUCO_FAULT=fault))
    assert killed.returncode == KILLED, (killed.returncode, killed.stderr[-2000:])
    for ckpt in tmp_path.rglob("checkpoint-*.pt"):  # whatever is at a final path loads
        torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not list(tmp_path.rglob("checkpoint-final.pt"))
    resumed = _train(tiny_dataset, tmp_path, precision, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref, got = _final(train_reference[precision]), _final(tmp_path)
    assert not _equal(ref, got), _equal(ref, got)[:10]
    metric = lambda out: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                          for line in next(out.glob("train-*/metrics.jsonl")).read_text().splitlines()]
    assert metric(tmp_path) == metric(train_reference[precision])
    assert not temporaries(tmp_path)
