"""Shared by the tests that run the ``hamuco`` program as a user types it, and by bench/chaos.py."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parent.parent
HAMUCO = str(Path(sys.executable).with_name("hamuco"))
LUIGID = shutil.which("luigid", path=str(Path(sys.executable).parent)) or "luigid"
FAULT_VARIABLES = ("HAMUCO_FAULT", "HAMUCO_FAIL", "HAMUCO_PAUSE", "HAMUCO_FAULT_KILL", "HAMUCO_FAULT_LOG")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in FAULT_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args, env: dict | None = None, timeout: float = 300, cwd=REPO) -> subprocess.CompletedProcess:
    """``hamuco ARGS`` in its own session; a run past ``timeout`` (a hang) is killed and raises."""
    proc = subprocess.Popen([HAMUCO, *map(str, args)], cwd=cwd, env=env or clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"hamuco {' '.join(map(str, args))} still running after {timeout} s (a hang)\n"
                             f"stdout: {out[-2000:]}\nstderr: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Luigid:
    """A real central scheduler on 127.0.0.1 for the duration of a with-block (or of a fixture)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.proc = None

    def __enter__(self) -> "Luigid":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.workdir / "luigid.out", "w")
        self.proc = subprocess.Popen([LUIGID, "--address", "127.0.0.1", "--port", str(self.port), "--logdir",
                                      str(self.workdir), "--state-path", str(self.workdir / "state.pickle")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"luigid exited: {(self.workdir / 'luigid.out').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("luigid did not start listening within 60 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    @property
    def options(self) -> list[str]:
        return ["--scheduler-host", "127.0.0.1", "--scheduler-port", str(self.port)]

    def prune(self) -> None:
        """Make luigid forget workers that stopped pinging (what opening its web page does)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/task_list?data=%7B%7D", timeout=10) as r:
            r.read()

    def active_workers(self) -> int:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/worker_list", timeout=5) as r:
            return len(json.loads(r.read())["response"])


def wait_for(path: Path, timeout: float = 300, proc: subprocess.Popen | None = None) -> None:
    """Wait until a file exists (a process reached a barrier); fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (status {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def shard_arrays(path) -> dict:
    """Every dataset of a shard, read in full (a truncated file fails here), and its deterministic attributes."""
    out = {}
    with h5py.File(path, "r") as f:
        for name, ds in f.items():
            out[name] = ds[()]
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()
                        if k not in ("created",)}
    return out


def same_arrays(a: dict, b: dict) -> list[str]:
    """Names whose contents differ between two ``shard_arrays`` results."""
    diff = []
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            diff.append(key)
        elif key == "attrs":
            if {k: str(v) for k, v in a[key].items()} != {k: str(v) for k, v in b[key].items()}:
                diff.append(key)
        elif not np.array_equal(np.asarray(a[key]), np.asarray(b[key]), equal_nan=a[key].dtype.kind == "f"):
            diff.append(key)
    return diff


def temporaries(root) -> list[Path]:
    """Temporary files or directories left under ``root`` by this project's writers."""
    return sorted(p for p in Path(root).rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp"))


def render_in_chromium(page: Path, profile: Path) -> dict:
    """Open a static HTML page in headless Chromium (Debian's chromium + chromedriver, ``make chromium``)
    and return what a reader sees: images (alt, loaded, width, height), rows per table, h2 headings and
    the console's errors."""
    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Debian's chromium and chromium-driver are needed: run 'make chromium' "
                    "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(Path(page).resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        tables = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => t.querySelectorAll('tbody tr').length)")
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        logs = driver.get_log("browser")
    finally:
        driver.quit()
    return {"images": images, "tables": tables, "headings": headings,
            "errors": [e for e in logs if e["level"] in ("SEVERE", "ERROR")]}
