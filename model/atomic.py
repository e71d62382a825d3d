"""Atomic outputs, the temporaries a killed writer leaves, and deliberate fault points.

Every file this project writes is first written to a temporary file beside its final path,

    .<name>.<host>.<pid>.<random>.tmp

then flushed, fsynced and renamed onto ``<name>``. A file at a final path is therefore always
complete; a writer killed mid-way leaves only a temporary. Any writer of ``<name>`` removes the
temporaries of earlier writers of the same name before it starts (:func:`remove_stale_temporaries`):
those of a process of this host that no longer runs, and those of other hosts (or of an unknown
format) once they are older than a day, so that a live writer on another machine sharing the
file system is never disturbed.

Fault points (for tests and ``bench/chaos.py``): with the environment variable
``HAMUCO_FAULT="<point>[:<match>][@<n>]"`` (several separated by commas) a process stops itself
with SIGKILL the ``n``-th time (default 1) it reaches ``<point>`` with a detail containing
``<match>``. ``HAMUCO_FAULT_KILL=group`` kills the whole process group instead (the command and
its worker processes, as a user's kill of the job would). ``HAMUCO_FAULT_LOG=<file>`` appends
one line per kill (point, detail, pid) before it happens, so a harness knows where it landed.
Counts are per process. The points:

==================  ========================  =====================================================
point               detail                    where
==================  ========================  =====================================================
``mid-write``       final file name           after the first block of a temporary file is written
``before-rename``   final file name           temporary complete and fsynced, not yet renamed
``shard-sample``    shard file name           after each sample added to an HDF5 shard
``task-done``       Luigi task family         a task's outputs are complete, before it reports done
``train-step``      step number               after an optimizer step, before its checkpoint
``task-start``      Luigi task family         a task is about to run (its dependencies complete)
``worker-idle``     Luigi worker id           a worker found no work and waits for other workers
==================  ========================  =====================================================

The same points also answer ``HAMUCO_FAIL`` (raise an error there) and ``HAMUCO_PAUSE`` (wait
for a file there): see :func:`fault_point`.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import HamucoError

STALE_AFTER_S = 24 * 3600  # temporaries of other hosts (or unknown writers) older than this are removed

_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
_COUNTS: Counter = Counter()


# ----------------------------------------------------------------------------- fault points

class InjectedFailure(HamucoError):
    """A failure asked for by ``HAMUCO_FAIL`` (tests of what a failed task does to a command)."""


def _matches(variable: str, point: str, detail: str) -> Optional[str]:
    """The first entry of ``$variable`` that selects this passage through ``point`` (and counts it)."""
    spec = os.environ.get(variable)
    if not spec:
        return None
    for one in spec.split(","):
        one = one.strip()
        head, _, value = one.partition("=")
        name, _, count = head.partition("@")
        name, _, match = name.partition(":")
        if name != point or (match and match not in str(detail)):
            continue
        _COUNTS[(variable, head)] += 1
        if _COUNTS[(variable, head)] == int(count or 1):
            return value or one
    return None


def fault_point(point: str, detail: str = "", on_fire: Optional[Callable[[], None]] = None) -> None:
    """A named point where a test or ``bench/chaos.py`` can make this process misbehave on purpose.

    ``HAMUCO_PAUSE="<point>[:<match>][@<n>]=<file>"``: write ``<file>.reached``, then wait until
    ``<file>`` exists (a barrier between processes, no sleeping on luck);
    ``HAMUCO_FAIL="<point>[:<match>][@<n>]"``: raise :class:`InjectedFailure`;
    ``HAMUCO_FAULT="<point>[:<match>][@<n>]"``: SIGKILL (see the module docstring).
    ``on_fire``: called just before an injected failure or kill (not a pause), to leave the state
    the fault stands for (e.g. a temporary cut to half its size for a kill mid-write).
    """
    release = _matches("HAMUCO_PAUSE", point, detail)
    if release:
        Path(release + ".reached").write_text(f"{point}\t{detail}\t{os.getpid()}\n")
        deadline = time.monotonic() + 600
        while not os.path.exists(release):
            if time.monotonic() > deadline:
                raise InjectedFailure(f"HAMUCO_PAUSE at {point} ({detail}): {release} never appeared")
            time.sleep(0.02)
    if _matches("HAMUCO_FAIL", point, detail):
        if on_fire:
            on_fire()
        raise InjectedFailure(f"injected failure at {point} ({detail}) by HAMUCO_FAIL")
    if _matches("HAMUCO_FAULT", point, detail) is None:
        return
    if on_fire:
        on_fire()
    log = os.environ.get("HAMUCO_FAULT_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{point}\t{detail}\t{os.getpid()}\n")
    if os.environ.get("HAMUCO_FAULT_KILL") == "group":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- temporaries

def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def temporary_name(path: str | os.PathLike) -> str:
    """The prefix of a temporary for ``path`` written by this process (``mkstemp`` adds the rest)."""
    return f"{_tmp_prefix(Path(path))}{_HOST}.{os.getpid()}."


def _alive(pid: int) -> bool:
    """Does process ``pid`` run on this host (a zombie, killed but not yet reaped, does not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return True


def _is_stale(tmp: Path, prefix: str, now: float) -> bool:
    rest = tmp.name[len(prefix):-len(".tmp")]
    host, _, tail = rest.partition(".")
    pid, _, _ = tail.partition(".")
    if host == _HOST and pid.isdigit():
        return int(pid) != os.getpid() and not _alive(int(pid))
    try:
        return now - tmp.lstat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return False


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Delete what killed writers of ``path`` left (files or directories); returns how many."""
    path = Path(path)
    prefix = _tmp_prefix(path)
    now = time.time()
    n = 0
    try:
        entries = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for tmp in entries:
        if not (tmp.name.startswith(prefix) and tmp.name.endswith(".tmp")) or not _is_stale(tmp, prefix, now):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        n += 1
    return n


def list_temporaries(root: str | os.PathLike) -> list[Path]:
    """Every temporary of this project's writers under ``root`` (for checks and ``bench/chaos.py``)."""
    return sorted(p for p in Path(root).rglob(".*.tmp"))


def new_temporary(path: str | os.PathLike, directory: bool = False) -> Path:
    """Create (after clearing stale ones) a temporary file or directory for ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if directory:
        return Path(tempfile.mkdtemp(prefix=temporary_name(path), suffix=".tmp", dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=temporary_name(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync a finished temporary file and rename it onto ``path``."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_file():
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fault_point("before-rename", path.name)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: write tmp`` — renamed onto ``p`` when the block succeeds,
    removed when it raises."""
    path = Path(path)
    tmp = new_temporary(path, directory)
    try:
        yield tmp
        if directory:
            fault_point("before-rename", path.name)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        else:
            commit(tmp, path)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


class _FaultingFile:
    """A binary file whose first write is a ``mid-write`` fault point (a half-written temporary)."""

    def __init__(self, fh, name: str):
        self._fh, self._name, self._reached = fh, name, False

    def write(self, data) -> int:
        n = self._fh.write(data)
        if not self._reached:
            self._reached = True
            self._fh.flush()
            fault_point("mid-write", self._name)
        return n

    def __getattr__(self, item):
        return getattr(self._fh, item)


def atomic_write_bytes(path: str | os.PathLike, write: Callable) -> None:
    """Write through ``write(fileobj)`` to a temporary file, then rename onto ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write(_FaultingFile(fh, path.name))


def atomic_write_file(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Like :func:`atomic_write_bytes` for writers that take a file name (``torch.save(obj, name)``:
    the library's own file I/O rather than a Python callback per chunk). The ``mid-write`` fault
    point comes after ``write``; a fault there first cuts the temporary to half its size, which is
    what a kill during the write leaves."""
    path = Path(path)
    with atomic_path(path) as tmp:
        write(tmp)
        fault_point("mid-write", path.name, on_fire=lambda: os.truncate(tmp, tmp.stat().st_size // 2))


def link_or_copy(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` a second name of the finished file ``src`` (a hard link; a copy where the file
    system has none), atomically: ``path`` is either absent, its old self, or complete."""
    src, path = Path(src), Path(path)
    with atomic_path(path) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))
