"""The trainer: exact resume after a kill, checkpoints, NaN stop, architecture check, torchrun DDP."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.errors import HamucoError
from model.trainer import CHECKPOINT_FINAL, CHECKPOINT_LAST, NonFiniteLoss, TrainConfig, Trainer, load_checkpoint

REPO = Path(__file__).resolve().parent.parent


class Toy(torch.utils.data.Dataset):
    """Noisy linear regression samples; augmentation noise depends on (epoch, index)."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.randn(8, 2, generator=g)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(1000 * self.epoch + i)
        return {"x": self.x[i] + 0.01 * torch.randn(8, generator=g), "y": self.y[i]}


def toy_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 2))


def objective(model, batch, step):
    loss = (model(batch["x"]) - batch["y"]).abs().mean()
    return {"total": loss, "l1": loss}


def run(out, steps, resume=True, until=None, **kw):
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-2, checkpoint_every=3, progress=False, **kw)
    t = Trainer(toy_model(), Toy(), objective, cfg, out, architecture={"model": "toy", "hidden": 16})
    return t, t.train(resume=resume, until=until)


def test_checkpoints_follow_checkpoint_every_not_epoch_ends(tmp_path):
    """One epoch is 6 steps here; with checkpoint_every 4 a run stopped after step 7 has its last
    checkpoint at step 4 (mid-epoch, resumable exactly), none at the epoch end (step 6)."""
    cfg = TrainConfig(steps=10, batch_size=4, lr=1e-2, checkpoint_every=4, progress=False)
    Trainer(toy_model(), Toy(), objective, cfg, tmp_path, architecture={"model": "toy", "hidden": 16}).train(until=7)
    state = load_checkpoint(tmp_path / CHECKPOINT_LAST)["state"]
    assert state["step"] == 4 and state["epoch"] == 0 and state["position"] == 16


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    straight, _ = run(tmp_path / "a", 14)
    # 7 of 14 steps, then a "kill" (no final checkpoint): a fresh trainer resumes from the
    # last checkpoint (step 6, one epoch = 6 steps: epoch end and periodic) and replays step 7
    run(tmp_path / "b", 14, until=7)
    ckpt = load_checkpoint(tmp_path / "b" / CHECKPOINT_LAST)
    assert ckpt["state"]["step"] == 6 and ckpt["state"]["epoch"] == 1 and ckpt["state"]["position"] == 0
    resumed, summary = run(tmp_path / "b", 14)
    assert summary["steps"] == 14
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 15))
    assert (tmp_path / "b" / "loss_curve.png").stat().st_size > 1000
    # the final checkpoint is the last one under a second name (one file on disk, not two copies)
    final = tmp_path / "b" / CHECKPOINT_FINAL
    assert os.path.samefile(final, tmp_path / "b" / CHECKPOINT_LAST)
    assert load_checkpoint(final)["state"]["step"] == 14
    # a run resumed when already complete keeps it so
    _, again = run(tmp_path / "b", 14)
    assert again["steps"] == 14 and os.path.samefile(final, tmp_path / "b" / CHECKPOINT_LAST)


def test_resume_mid_epoch_from_a_periodic_checkpoint(tmp_path):
    straight, _ = run(tmp_path / "a", 10)
    run(tmp_path / "b", 10, until=5)  # killed at step 5: the last checkpoint is step 3, mid-epoch
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_LAST)["state"]["position"] == 12
    resumed, _ = run(tmp_path / "b", 10)
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run(tmp_path, 3)
    good = (tmp_path / CHECKPOINT_LAST).read_bytes()

    def nan_after_4(model, batch, step):
        out = objective(model, batch, step)
        if step >= 4:
            out["total"] = out["total"] * float("nan")
        return out

    cfg = TrainConfig(steps=8, batch_size=4, checkpoint_every=100, progress=False)
    t = Trainer(toy_model(), Toy(), nan_after_4, cfg, tmp_path, architecture={"model": "toy", "hidden": 16})
    with pytest.raises(NonFiniteLoss, match="at step 4.*last good checkpoint"):
        t.train()
    assert (tmp_path / CHECKPOINT_LAST).read_bytes() == good  # untouched (it held step 3; steps 4.. not saved)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run(tmp_path, 3)
    cfg = TrainConfig(steps=5, batch_size=4, progress=False)
    t = Trainer(toy_model(), Toy(), objective, cfg, tmp_path, architecture={"model": "toy", "hidden": 32})
    with pytest.raises(HamucoError, match="another architecture: hidden: checkpoint 16, model 32"):
        t.train()


DDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from tests.test_trainer import Toy, toy_model, objective
from model.trainer import TrainConfig, Trainer
dist.init_process_group("gloo")
cfg = TrainConfig(steps=6, batch_size=2, lr=1e-2, checkpoint_every=3, progress=False)
t = Trainer(toy_model(), Toy(), objective, cfg, sys.argv[1], architecture={"model": "toy"})
t.train()
flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
torch.save(flat, f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_two_process_ddp_ranks_agree(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nnodes=1", "--nproc-per-node=2", str(script),
                           str(tmp_path), str(REPO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0, r1)  # DDP kept both ranks identical
    assert (tmp_path / CHECKPOINT_LAST).is_file()
    init = torch.cat([p.detach().flatten() for p in toy_model().parameters()])
    assert not torch.equal(r0, init)  # and they did train


def test_bf16_resume_is_exact_too(tmp_path):
    straight, _ = run(tmp_path / "a", 8, precision="bf16")
    run(tmp_path / "b", 8, until=4, precision="bf16")
    resumed, _ = run(tmp_path / "b", 8, precision="bf16")
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))


def test_keep_freed_memory_in_process_applies_on_glibc_and_can_be_turned_off():
    import platform

    code = ("import ctypes, torch; from model.trainer import keep_freed_memory_in_process as k; ok = k(); "
            "x = torch.randn(64, 1 << 16); del x; y = torch.randn(64, 1 << 16); print(ok, float(y.abs().sum()) > 0)")
    root = Path(__file__).resolve().parent.parent
    outs = {}
    for flag in ("1", "0"):
        env = {**os.environ, "HAMUCO_KEEP_FREED_MEMORY": flag, "PYTHONPATH": str(root)}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        outs[flag] = r.stdout.split()
    glibc = platform.libc_ver()[0] == "glibc"
    assert outs["1"] == [str(glibc), "True"]  # applied where glibc is, and allocation still works
    assert outs["0"] == ["False", "True"]


@pytest.mark.parametrize("schedule", ["constant", "warmup-cosine"])
def test_lr_schedules_follow_their_shape_and_resume_exactly(tmp_path, schedule):
    """The learning rate each step logs follows the schedule's closed form (constant stays at lr;
    warmup-cosine rises linearly for lr_warmup_steps, then falls to min_lr), and a run killed mid-way
    and resumed ends with the weights of an uninterrupted one (the schedule's position is in the
    checkpoint)."""
    kw = dict(lr_schedule=schedule, lr_warmup_steps=4 if schedule == "warmup-cosine" else 0)
    straight, _ = run(tmp_path / "a", 12, **kw)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 12
    if schedule == "constant":
        assert lrs == [pytest.approx(1e-2)] * 12
    else:
        rising, falling = lrs[:3], lrs[3:]
        assert all(b > a for a, b in zip(rising, rising[1:])) and max(lrs) == pytest.approx(1e-2)
        assert all(b < a for a, b in zip(falling, falling[1:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    run(tmp_path / "b", 12, until=7, **kw)
    resumed, _ = run(tmp_path / "b", 12, **kw)
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))


def test_grad_clip_logs_the_norm_before_clipping_and_changes_the_update(tmp_path):
    """With grad_clip each step logs the gradients' total norm before clipping; a limit below those norms
    changes the weights (clipping is applied, not only logged), a limit above them leaves the weights
    bit-identical to a run without clipping; without it no norm is logged."""
    plain, _ = run(tmp_path / "plain", 6)
    assert all("grad_norm" not in json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines())
    loose, _ = run(tmp_path / "loose", 6, grad_clip=1e6)
    norms = [json.loads(x)["grad_norm"] for x in (tmp_path / "loose" / "metrics.jsonl").read_text().splitlines()]
    assert len(norms) == 6 and all(math.isfinite(n) and n > 0 for n in norms)
    # a limit far above every norm leaves the update as it was
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(), loose.model.state_dict().values()))
    tight, _ = run(tmp_path / "tight", 6, grad_clip=min(norms) / 100)
    assert not all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                      tight.model.state_dict().values()))


def test_lr_factor_closed_forms_and_the_default_schedule_is_unchanged(tmp_path):
    from model.trainer import lr_factor

    assert lr_factor("warmup-cosine", 0, 10, 4, 0.0) == pytest.approx(1 / 5)
    assert lr_factor("warmup-cosine", 4, 10, 4, 0.0) == pytest.approx(1.0)
    assert lr_factor("warmup-cosine", 7, 10, 4, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor("warmup-cosine", 10, 10, 4, 0.1) == pytest.approx(0.1)
    assert lr_factor("constant", 99, 10, 0, 0.0) == 1.0
    # the default stays torch's CosineAnnealingLR: lr_k = lr/2 (1 + cos(pi k / steps)), logged after step k
    run(tmp_path, 6)
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-2 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(1, 7)])
    with pytest.raises(HamucoError, match="lr_warmup_steps"):
        run(tmp_path / "bad", 6, lr_schedule="warmup-cosine", lr_warmup_steps=6)
    with pytest.raises(HamucoError, match="unknown lr_schedule"):
        run(tmp_path / "bad2", 6, lr_schedule="step")
