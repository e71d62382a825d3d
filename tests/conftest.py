import shutil

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
