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
