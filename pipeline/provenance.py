"""What made an output: the code version recorded in captures, shards and checkpoints, file digests."""
from __future__ import annotations

import hashlib
import os
import subprocess
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+g<commit>[.dirty]`` inside a git checkout, else the package version."""
    try:
        from importlib.metadata import version

        base = version("hamuco-pipeline")
    except Exception:
        base = "0+unknown"
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{base}+g{commit}{'.dirty' if dirty else ''}"
    except Exception:
        return base


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights, checkpoints, dataset indexes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StageTimes:
    """Seconds spent per pipeline stage (decode, detect, select, crop, label, refine, write), summed over
    calls: ``with times("detect"): ...``. Recorded in the detection and quarantine outputs so that
    ``bench/prepare.py`` can say where a preparation's time went."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.items: dict[str, int] = {}  # what a stage processed (e.g. crops labelled), for rates

    def count(self, stage: str, n: int) -> None:
        self.items[stage] = self.items.get(stage, 0) + int(n)

    def __call__(self, stage: str):
        return _Stage(self, stage)

    def begin(self, stage: str) -> "_Stage":
        """Start timing ``stage`` until the returned object's ``end()`` (for blocks a ``with`` would split)."""
        return _Stage(self, stage).__enter__()

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)

    def merge(self, other: "StageTimes", suffix: str = "") -> None:
        """Add another record's seconds and counts (``suffix`` appended to its stage names: work done in a
        background thread, which overlaps this record's stages, is kept apart as ``<stage>_background``)."""
        for k, v in other.seconds.items():
            self.add(k + suffix, v)
        for k, n in other.items.items():
            self.count(k + suffix, n)

    def to_json(self) -> dict:
        return {k: round(v, 4) for k, v in self.seconds.items()}


class _Stage:
    __slots__ = ("times", "stage", "t0")

    def __init__(self, times: StageTimes, stage: str) -> None:
        self.times, self.stage = times, stage

    def __enter__(self):
        import time

        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import time

        self.times.seconds[self.stage] = self.times.seconds.get(self.stage, 0.0) + time.perf_counter() - self.t0

    def end(self) -> None:
        self.__exit__()
