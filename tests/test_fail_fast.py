"""A failed task ends the command: every command, with the local scheduler and with luigid.

Failures are reached on purpose (``HAMUCO_FAIL`` raises at a named point, ``HAMUCO_PAUSE`` holds a
process at a barrier until the test releases it), never by timing. A run still going after the
timeout of ``run_cli`` is a hang and fails the test.
"""
import subprocess
import sys

import pytest

from tests.helpers import HAMUCO, REPO, clean_env, run_cli, wait_for

ROUTES = ["local", "luigid"]


def _command(name, tmp_path, small_capture, tiny_dataset, tiny_checkpoint):
    """(arguments, the task made to fail) of each command."""
    if name == "prepare":
        return ["prepare", small_capture.root, "--out", tmp_path / "prep", "--frames-per-shard", "1",
                "--crop-size", "64"], "LabelShard"
    if name == "train":
        return ["train", "--dataset", tiny_dataset, "--out", tmp_path / "train", "--backbone", "resnet18",
                "--steps", "2", "--batch-size", "1"], "TrainModel"
    if name == "evaluate":
        return ["evaluate", "--checkpoint", tiny_checkpoint, "--dataset", tiny_dataset, "--out",
                tmp_path / "eval"], "EvaluateModel"
    if name == "reproduce-hanco":
        from tests.test_hanco import make_dataset

        make_dataset(tmp_path / "HanCo")
        return ["reproduce-hanco", "--root", tmp_path / "HanCo", "--out", tmp_path / "repro", "--steps", "1",
                "--backbone", "resnet18", "--backbone-weights", "none"], "ValidateCapture"
    if name == "demo":
        return ["demo", "--out", tmp_path / "demo"], "SyntheticCapture"
    raise ValueError(name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "reproduce-hanco", "demo"])
def test_a_failed_task_ends_the_command(command, route, tmp_path, small_capture, tiny_dataset, tiny_checkpoint,
                                        request):
    args, family = _command(command, tmp_path, small_capture, tiny_dataset, tiny_checkpoint)
    if route == "luigid":
        args += request.getfixturevalue("luigid").options
    result = run_cli(*args, env=clean_env(HAMUCO_FAIL=f"task-start:{family}"), timeout=240)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    lines = [x for x in result.stderr.splitlines() if "error:" in x]
    assert any(f"hamuco {command}: error: {family} failed: injected failure at task-start ({family})" in x
               for x in lines), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_a_failure_on_one_worker_ends_the_other_worker(small_capture, luigid, tmp_path):
    """Two workers share one luigid. A holds the only shard's labelling (paused at a barrier) while B,
    with nothing left to do, stays alive for it; A's task then fails: both commands end, B naming A's
    failure, instead of B waiting for Luigi's retry."""
    out = tmp_path / "out"
    args = [HAMUCO, "prepare", str(small_capture.root), "--out", str(out), "--frames-per-shard", "8",
            "--crop-size", "64", *luigid.options]
    barrier = tmp_path / "release"
    idle = tmp_path / "b-idle"
    idle.write_text("")  # B passes this barrier at once; its marker says B is waiting for work
    env_a = clean_env(HAMUCO_PAUSE=f"task-start:LabelShard={barrier}", HAMUCO_FAIL="task-start:LabelShard")
    env_b = clean_env(HAMUCO_PAUSE=f"worker-idle={idle}")
    a = subprocess.Popen(args, cwd=REPO, env=env_a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = None
    try:
        wait_for(tmp_path / "release.reached", proc=a)  # A is running the shard's LabelShard
        b = subprocess.Popen(args, cwd=REPO, env=env_b, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(tmp_path / "b-idle.reached", proc=b)  # B scheduled everything and found nothing to run
        assert b.poll() is None  # ... and stays alive for the shard running on A
        barrier.write_text("go")
        _, err_a = a.communicate(timeout=240)
        _, err_b = b.communicate(timeout=240)
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    assert a.returncode == 1 and "LabelShard failed: injected failure" in err_a, err_a[-2000:]
    assert b.returncode == 1, err_b[-2000:]
    assert "LabelShard failed on another worker: InjectedFailure: injected failure" in err_b, err_b[-2000:]


def test_python_m_luigi_exits_non_zero_on_failure(small_capture, tmp_path):
    """Luigi's own command line, with this project's luigi.cfg: a failed task gives status 30, at once."""
    cmd = [sys.executable, "-m", "luigi", "--module", "tasks", "PrepareDataset", "--captures",
           f'["{small_capture.root}"]', "--out", str(tmp_path), "--frames-per-shard", "1", "--crop-size", "64",
           "--local-scheduler"]
    result = subprocess.run(cmd, cwd=REPO, env=clean_env(HAMUCO_FAIL="task-start:DetectHands"),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 30, result.stderr[-3000:]
    assert "injected failure" in result.stderr
