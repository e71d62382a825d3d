import os

# Under pytest-xdist (make test runs one worker per core) each worker and the commands it starts get an
# equal share of the cores: OpenMP pools of two processes spinning on the same cores slow each other
# far more than twice. A thread count set by the user is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

import shutil
from pathlib import Path

import pytest

from pipeline.synthetic import SynthConfig, generate_capture

SMALL = SynthConfig(cameras=4, frames=3, seed=7, image_size=160)


@pytest.fixture(scope="session")
def small_capture(tmp_path_factory):
    """A small synthetic capture, generated once per test session (read-only)."""
    root = tmp_path_factory.mktemp("captures") / "small"
    return generate_capture(root, SMALL, progress=False)


@pytest.fixture
def capture_copy(small_capture, tmp_path):
    """A private copy of the small capture that a test may break."""
    dst = tmp_path / "copy"
    shutil.copytree(small_capture.root, dst)
    return dst


@pytest.fixture(scope="session")
def tiny_dataset(small_capture, tmp_path_factory):
    """The small capture prepared with 64² crops, one frame per shard (train, val and test one shard each)."""
    import luigi

    from tasks.prepare import PrepareDataset

    task = PrepareDataset(captures=[str(small_capture.root)], out=str(tmp_path_factory.mktemp("tiny") / "prepared"),
                          frames_per_shard=1, crop_size=64)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    return Path(task.output().path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory):
    """A two-step ResNet-18 checkpoint on the tiny dataset."""
    import luigi

    from tasks.train import TrainModel

    task = TrainModel(dataset=str(tiny_dataset), out=str(tmp_path_factory.mktemp("tiny-train")),
                      backbone="resnet18", steps=2, batch_size=1, checkpoint_every=1)
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    return Path(task.output().path)


@pytest.fixture(scope="session")
def luigid(tmp_path_factory):
    """A central scheduler (luigid) on 127.0.0.1, shared by the tests of one session."""
    from tests.helpers import Luigid

    with Luigid(tmp_path_factory.mktemp("luigid")) as daemon:
        yield daemon


# The long test files first, so that under pytest-xdist (``make test``: ``-n auto --dist loadfile
# --no-loadscope-reorder``) the workers start on them and the many short files fill in at the end instead
# of one long file running alone last. A file of one or three long tests comes before a file of many short
# ones of about the same total (one-process seconds on the 2-core AVX2 machine, 2026-12-01).
LONGEST_FIRST = ["test_train_task",  # three 150-step trainings, ~170 s
                 "test_science",  # one test: two science smoke processes through luigid, ~140 s
                 "test_bad_inputs",  # ~30 commands of ~6 s, ~180 s
                 "test_chaos",  # one test, ~110 s (fp32 training kills only)
                 "test_faults",  # ~20 tests, ~130 s
                 "test_openpose", "test_fail_fast", "test_hanco", "test_prepare", "test_precision",
                 "test_reproducible", "test_trainer", "test_evaluate_task"]


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))
