"""Benchmark: SIGKILLs over data preparation and training, each followed by a rerun or a resume.

Data preparation is killed on both routes (the ``hamuco prepare`` command and ``python -m luigi``),
with 1 and 2 worker processes, with the local scheduler and with a central luigid on 127.0.0.1;
training in fp32 and bf16, around its checkpoint writes, and resumed by ``hamuco train --resume``
or by rerunning the task with ``python -m luigi``. Kills are either targeted (``HAMUCO_FAULT`` stops
the process group at a named point: mid-shard, a finished temporary before its rename, between
shards, a half-written checkpoint, ...) or, without ``--quick``, sent from outside after a random
delay (seeded) within the length of an uninterrupted run; a random kill that comes after the run
finished is counted apart, not as a kill.

After each kill: every file at a final path is read in full (HDF5 shards: every dataset; JSON
parsed; checkpoints loaded with ``weights_only=True``). After each rerun or resume: its exit
status, its shards against an uninterrupted run of the same seed (every dataset, bit for bit), the
final checkpoint against an uninterrupted training (every tensor, optimizer and RNG state, bit for
bit) and the metrics, the temporary files left anywhere, and any command still running after its
timeout (a hang).

Prints one line per kill, then one JSON object on the last line. ``--quick`` (targeted kills only,
deterministic, training in fp32 only, about two minutes) runs in the tests; the full run writes ``--json-out``
(``results/reliability.json``).

Usage: python bench/chaos.py [--quick] [--seed S] [--json-out results/reliability.json]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from pipeline.synthetic import DEMO_CONFIG, generate_capture  # noqa: E402
from tests.helpers import HAMUCO, REPO, Luigid, clean_env, same_arrays, shard_arrays, temporaries  # noqa: E402

TIMEOUT = 600  # a command still running after this is a hang
PREPARE_POINTS = ["shard-sample:shard-00001", "before-rename:shard-00002.h5", "task-done:LabelShard",
                  "mid-write:quarantine.json", "mid-write:shard-00003.json", "before-rename:dataset-",
                  "shard-sample:shard-00004", "before-rename:shards.json"]
TRAIN_POINTS = ["train-step@3", "mid-write:checkpoint-last.pt", "before-rename:checkpoint-last.pt@2",
                "mid-write:checkpoint-last.pt@3", "before-rename:checkpoint-final.pt", "train-step@5"]
TRAIN_ARGS = {"backbone": "resnet18", "steps": 6, "batch_size": 1, "checkpoint_every": 2}


class Run:
    """One command in its own process group, with a hang guard."""

    def __init__(self, cmd: list, env: dict):
        self.cmd = [str(c) for c in cmd]
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.hung = False

    def wait(self, kill_after: float | None = None) -> tuple[int, bool, str]:
        """(status, killed by us, stderr tail); ``kill_after`` seconds: SIGKILL the group then."""
        killed = False
        try:
            _, err = self.proc.communicate(timeout=kill_after if kill_after is not None else TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
            killed = kill_after is not None
            self.hung = kill_after is None
        return self.proc.returncode, killed, (err or "")[-1500:]


def prepare_cmd(route: str, capture: Path, out: Path, workers: int, luigid: Luigid | None) -> list:
    if route == "cli":
        return [HAMUCO, "prepare", capture, "--out", out, "--frames-per-shard", 1, "--crop-size", 64,
                "--workers", workers, *(luigid.options if luigid else [])]
    sched = (["--scheduler-host", "127.0.0.1", "--scheduler-port", luigid.port] if luigid else ["--local-scheduler"])
    return [sys.executable, "-m", "luigi", "--module", "tasks", "PrepareDataset", "--captures", json.dumps([str(capture)]),
            "--out", out, "--frames-per-shard", 1, "--crop-size", 64, "--workers", workers, *sched]


def train_cmd(route: str, dataset: Path, out: Path, precision: str, resume: bool) -> list:
    if route == "cli":
        return [HAMUCO, "train", "--dataset", dataset, "--out", out, "--precision", precision,
                *[x for k, v in TRAIN_ARGS.items() for x in (f"--{k.replace('_', '-')}", v)],
                *(["--resume"] if resume else [])]
    return [sys.executable, "-m", "luigi", "--module", "tasks", "TrainModel", "--dataset", dataset, "--out", out,
            "--precision", precision, *[x for k, v in TRAIN_ARGS.items() for x in (f"--{k.replace('_', '-')}", v)],
            "--local-scheduler"]


def final_outputs_broken(root: Path) -> list[str]:
    """Files at final paths that cannot be read in full."""
    from pipeline.shards import verify_shard

    broken = []
    for p in root.rglob("*"):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            if p.suffix == ".h5":
                verify_shard(p, deep=True)
                shard_arrays(p)
            elif p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".pt":
                torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 — any failure to read is what we count
            broken.append(f"{p}: {type(exc).__name__}: {exc}")
    return broken


def shard_differences(reference: Path, out: Path) -> list[str]:
    ref = {p.relative_to(reference).as_posix(): p for p in reference.rglob("shard-*.h5")}
    got = {p.relative_to(out).as_posix(): p for p in out.rglob("shard-*.h5")}
    if sorted(ref) != sorted(got):
        return [f"shard sets differ: {sorted(set(ref) ^ set(got))}"]
    return [f"{k}: {d}" for k in ref for d in same_arrays(shard_arrays(ref[k]), shard_arrays(got[k]))]


def checkpoint_differences(a: dict, b: dict, path: str = "") -> list[str]:
    if path == "/provenance/params/out":  # the output root each run was given
        return []
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path}: keys differ"]
        return [d for k in a for d in checkpoint_differences(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [path]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in checkpoint_differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        return [] if (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                      and torch.equal(a, b)) else [path]
    return [] if a == b else [path]


def final_checkpoint(out: Path) -> dict:
    (path,) = out.glob("train-*/checkpoint-final.pt")
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics(out: Path) -> list[dict]:
    (path,) = out.glob("train-*/metrics.jsonl")
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in path.read_text().splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="targeted kills only, a few of each kind (for the tests)")
    ap.add_argument("--seed", type=int, default=0, help="random kill times (full run)")
    ap.add_argument("--random-kills", type=int, default=2, help="random-time kills per configuration (full run)")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    ap.add_argument("--json-out", default=None, help="also write the summary JSON here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t_start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="hamuco-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    trials: list[dict] = []
    totals = {k: 0 for k in ("kills", "finished_before_kill", "incomplete_outputs", "failed_reruns",
                             "data_differences", "weight_differences", "hangs", "leftover_temporaries")}

    def record(kind: str, config: dict, how: str, status: int, killed: bool, out: Path, rerun, diffs: list,
               diff_key: str) -> None:
        broken_after_kill = config.pop("_broken", [])
        rerun_status, _, rerun_err = rerun
        left = temporaries(out)
        trial = {"kind": kind, **config, "kill": how, "status": status, "killed": killed,
                 "incomplete_outputs": len(broken_after_kill), "rerun_status": rerun_status,
                 diff_key: len(diffs), "leftover_temporaries": len(left)}
        trials.append(trial)
        if not killed:
            totals["finished_before_kill"] += 1
        else:
            totals["kills"] += 1
        totals["incomplete_outputs"] += len(broken_after_kill)
        totals["failed_reruns"] += int(rerun_status != 0)
        totals[diff_key] += len(diffs)
        totals["leftover_temporaries"] += len(left)
        flag = "ok" if not (broken_after_kill or rerun_status or diffs or left) else "PROBLEM"
        print(f"[{len(trials):3d}] {kind:<7} {json.dumps(config):<60} {how:<40} "
              f"{'killed' if killed else 'finished'}; rerun {rerun_status}; {flag}", flush=True)
        for line in broken_after_kill[:3] + diffs[:3] + [str(p) for p in left[:3]]:
            print(f"      {line}", flush=True)
        if rerun_status:
            print(f"      rerun stderr: {rerun_err[-600:]}", flush=True)

    # ------------------------------------------------------------------ inputs and references
    capture = generate_capture(work / "capture", replace(DEMO_CONFIG, cameras=4, frames=6, seed=3,
                                                         image_size=160), progress=False).root
    luigid_cfg = work / "luigid.cfg"  # the scheduler notices a killed worker after 5 s (default 60)
    luigid_cfg.write_text("[scheduler]\nworker_disconnect_delay = 5\n")
    env = clean_env()
    reference = work / "prepare-reference"
    t0 = time.perf_counter()
    status, _, err = Run(prepare_cmd("cli", capture, reference, 1, None), env).wait()
    assert status == 0, err
    prepare_seconds = time.perf_counter() - t0
    (dataset,) = reference.glob("dataset-*.json")
    train_reference, train_seconds = {}, {}
    # --quick trains in fp32 only: tests/test_faults.py kills and resumes a bf16 training
    precisions = ("fp32",) if args.quick else ("fp32", "bf16")
    for precision in precisions:
        out = work / f"train-reference-{precision}"
        t0 = time.perf_counter()
        status, _, err = Run(train_cmd("cli", dataset, out, precision, False), env).wait()
        assert status == 0, err
        train_seconds[precision] = time.perf_counter() - t0
        train_reference[precision] = out
    print(f"uninterrupted runs: prepare {prepare_seconds:.1f} s, "
          + ", ".join(f"train {k} {v:.1f} s" for k, v in train_seconds.items()), flush=True)

    # ------------------------------------------------------------------ data preparation
    luigid = Luigid(work / "luigid")
    os.environ["LUIGI_CONFIG_PATH"] = str(luigid_cfg)  # read by luigid only (started below)
    with luigid:
        del os.environ["LUIGI_CONFIG_PATH"]
        configs = [(route, workers, sched) for route in ("cli", "luigi") for workers in (1, 2)
                   for sched in ("local", "luigid")]
        points = PREPARE_POINTS[:2] if args.quick else PREPARE_POINTS
        if args.quick:  # each route, worker count and scheduler at least once (8 kills, for the tests)
            configs = [("cli", 1, "local"), ("cli", 2, "luigid"), ("luigi", 1, "local"), ("luigi", 2, "local")]
        n = 0
        for route, workers, sched in configs:
            kills = [("point", p) for p in points] + ([] if args.quick else
                                                       [("random", None)] * args.random_kills)
            for how, point in kills:
                n += 1
                out = work / f"prepare-{n:03d}"
                daemon = luigid if sched == "luigid" else None
                cmd = prepare_cmd(route, capture, out, workers, daemon)
                config = {"route": route, "workers": workers, "scheduler": sched}
                if how == "point":
                    kill_env = clean_env(HAMUCO_FAULT=point, HAMUCO_FAULT_KILL="group")
                    status, killed, _ = Run(cmd, kill_env).wait()
                    killed = status == -signal.SIGKILL
                    label = point
                else:
                    delay = rng.uniform(0.3, 1.0) * prepare_seconds
                    status, killed, _ = Run(cmd, env).wait(kill_after=delay)
                    label = f"random after {delay:.2f} s"
                config["_broken"] = final_outputs_broken(out)
                if sched == "luigid" and route == "luigi":
                    # Luigi's own worker does not wait for the tasks the killed worker held: let luigid
                    # notice the dead worker first (worker_disconnect_delay, then a page view prunes it);
                    # the hamuco command does this itself
                    time.sleep(6)
                    daemon.prune()
                rerun_run = Run(cmd, env)
                rerun = rerun_run.wait()
                totals["hangs"] += int(rerun_run.hung)
                diffs = shard_differences(reference, out) if rerun[0] == 0 else []
                record("prepare", config, label, status, killed, out, rerun, diffs, "data_differences")
                shutil.rmtree(out, ignore_errors=True)

    # ------------------------------------------------------------------ training
    n = 0
    for precision in precisions:
        points = TRAIN_POINTS[:2] if args.quick else TRAIN_POINTS
        kills = [("point", p) for p in points] + ([] if args.quick else [("random", None)] * args.random_kills)
        for i, (how, point) in enumerate(kills):
            n += 1
            out = work / f"train-{n:03d}"
            route = "cli" if i % 2 == 0 else "luigi"  # resumed by --resume, or by rerunning the task
            config = {"precision": precision, "resume": "hamuco train --resume" if route == "cli"
                      else "python -m luigi TrainModel"}
            if how == "point":
                status, killed, _ = Run(train_cmd("cli", dataset, out, precision, False),
                                        clean_env(HAMUCO_FAULT=point, HAMUCO_FAULT_KILL="group")).wait()
                killed = status == -signal.SIGKILL
                label = point
            else:
                delay = rng.uniform(0.4, 1.0) * train_seconds[precision]
                status, killed, _ = Run(train_cmd("cli", dataset, out, precision, False), env).wait(kill_after=delay)
                label = f"random after {delay:.2f} s"
            config["_broken"] = final_outputs_broken(out)
            rerun_run = Run(train_cmd(route, dataset, out, precision, True), env)
            rerun = rerun_run.wait()
            totals["hangs"] += int(rerun_run.hung)
            diffs = []
            if rerun[0] == 0:
                diffs = checkpoint_differences(final_checkpoint(train_reference[precision]), final_checkpoint(out))
                if metrics(out) != metrics(train_reference[precision]):
                    diffs.append("metrics.jsonl differs")
            record("train", config, label, status, killed, out, rerun, diffs, "weight_differences")
            shutil.rmtree(out, ignore_errors=True)

    summary = {"benchmark": "chaos", "quick": args.quick, "seed": args.seed, **totals,
               "kills_prepare": sum(t["killed"] for t in trials if t["kind"] == "prepare"),
               "kills_train": sum(t["killed"] for t in trials if t["kind"] == "train"),
               "uninterrupted_seconds": {"prepare": round(prepare_seconds, 2),
                                         **{f"train_{k}": round(v, 2) for k, v in train_seconds.items()}},
               "seconds": round(time.perf_counter() - t_start, 1), "trials": trials}
    summary["passed"] = (summary["kills"] > 0 and all(summary[k] == 0 for k in (
        "incomplete_outputs", "failed_reruns", "data_differences", "weight_differences", "hangs",
        "leftover_temporaries")))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{summary['kills']} kills ({summary['kills_prepare']} preparation, {summary['kills_train']} training), "
          f"{summary['finished_before_kill']} runs finished before their random kill; incomplete outputs "
          f"{summary['incomplete_outputs']}, failed reruns {summary['failed_reruns']}, data differences "
          f"{summary['data_differences']}, weight differences {summary['weight_differences']}, hangs "
          f"{summary['hangs']}, leftover temporaries {summary['leftover_temporaries']} ({summary['seconds']} s)")
    print(json.dumps({k: v for k, v in summary.items() if k != "trials"}))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
