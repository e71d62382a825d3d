"""A trainer over any torch Dataset: AdamW, cosine schedule, exact resume, atomic checkpoints.

The trainer knows nothing of file formats or Luigi. It is given a model, a dataset and an
objective ``objective(model, batch, step) -> dict[str, Tensor]`` whose ``"total"`` entry is
minimised (the other entries are logged).

Checkpoints (``checkpoint-last.pt`` every ``checkpoint_every`` steps, plus
``checkpoint-final.pt``; not at epoch ends: the data-order state resumes mid-epoch exactly, and
a small dataset would otherwise write the whole model every few steps) hold the model,
optimizer, scheduler, torch RNG state and the data-order state (epoch, position in the
epoch's permutation), and the architecture and provenance they were made with. They are written to a temporary file and renamed, and read
with ``torch.load(..., weights_only=True)``. Resuming continues exactly: on CPU, k steps, a
kill and k resumed steps give the same weights as 2k steps.

A non-finite loss stops the run with a message; the last good checkpoint stays as it was.
Metrics go to ``metrics.jsonl`` (one JSON object per step) and ``loss_curve.png``.
Multi-process training: run under ``torchrun`` (gloo on CPU); each rank takes every
world-size-th sample of the shared permutation and gradients are averaged by
DistributedDataParallel; rank 0 writes checkpoints and metrics.
"""
from __future__ import annotations

import functools
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .atomic import atomic_path, atomic_write_file, atomic_write_text, fault_point, link_or_copy
from .errors import HamucoError
from .precision import PrecisionChoice, resolve_precision
from .safe_load import safe_torch_load

CHECKPOINT_LAST = "checkpoint-last.pt"
CHECKPOINT_FINAL = "checkpoint-final.pt"
CHECKPOINT_BEST = "checkpoint-best.pt"  # the best by the validation signal ``TrainConfig.select_by``
VALIDATION_LOG = "validation.jsonl"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8  # groups (samples of V views) per step and process
    lr: float = 3e-4
    weight_decay: float = 1e-2
    min_lr: float = 0.0  # cosine annealing to this
    # "cosine": from lr to min_lr over the run (the default, as before the option existed); "constant";
    # "warmup-cosine": linear from 0 to lr over lr_warmup_steps, then cosine to min_lr (make_scheduler)
    lr_schedule: str = "cosine"
    lr_warmup_steps: int = 0
    checkpoint_every: int = 100
    seed: int = 0
    num_workers: int = 0
    grad_clip: Optional[float] = None  # clip the gradients' total norm to this (None or 0: off, the official code)
    # "auto": bf16 CPU autocast where the CPU computes bf16 natively (AVX512_BF16/AMX: ResNet-50 step 2x
    # faster, same loss), fp32 elsewhere (emulated bf16 is 10-18x slower); or "fp32" / "bf16" (model.precision)
    precision: str = "auto"
    channels_last: bool = False
    progress: bool = True
    validate_every: int = 0  # with a validation callable: a validation pass every this many steps (0: never)
    select_by: str = "label_signal"  # the validation signal (lower is better) that picks checkpoint-best.pt
    tensorboard: bool = True  # TensorBoard event files of the losses and validation signals in out/tensorboard


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    position: int = 0  # samples of the current epoch's permutation already consumed (all ranks)
    history: list = field(default_factory=list)
    best: Optional[dict] = None  # {"step", "value", "key"} of checkpoint-best.pt


class NonFiniteLoss(HamucoError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def _collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint atomically (``model.atomic``: a killed writer leaves only a temporary,
    which the next writer of the same checkpoint removes)."""
    atomic_write_file(Path(path), lambda tmp: torch.save(payload, str(tmp)))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, read with ``weights_only=True`` (``model.safe_load``)."""
    ckpt = safe_torch_load(path, "checkpoint")
    if not isinstance(ckpt, dict):
        raise HamucoError(f"{path}: not a training checkpoint (holds a {type(ckpt).__name__})")
    return ckpt


def check_architecture(ckpt: dict, architecture: dict, path: Path) -> None:
    found = ckpt.get("architecture")
    if found != architecture:
        diff = {k: (found.get(k) if isinstance(found, dict) else None, architecture.get(k))
                for k in set(architecture) | set(found or {})
                if not isinstance(found, dict) or found.get(k) != architecture.get(k)}
        raise HamucoError(f"{path}: checkpoint from another architecture: "
                          + ", ".join(f"{k}: checkpoint {a!r}, model {b!r}" for k, (a, b) in sorted(diff.items())))


LR_SCHEDULES = ("cosine", "constant", "warmup-cosine")


def lr_factor(schedule: str, step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """The learning rate at ``step`` as a share of the configured one (pure: also what the tests check)."""
    if schedule == "constant":
        return 1.0
    if schedule == "warmup-cosine" and step < warmup:
        return (step + 1) / (warmup + 1)  # never exactly 0: the first step already moves the weights
    start = warmup if schedule == "warmup-cosine" else 0
    u = min(1.0, max(0.0, (step - start) / max(steps - start, 1)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * u))


def make_scheduler(optimizer: torch.optim.Optimizer, config: "TrainConfig"):
    """The learning-rate schedule of ``config.lr_schedule``. "cosine" stays torch's CosineAnnealingLR (the
    schedule every run had before the option existed: same numbers, old checkpoints resume)."""
    if config.lr_schedule not in LR_SCHEDULES:
        raise HamucoError(f"unknown lr_schedule {config.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.steps, 1), eta_min=config.min_lr)
    if config.lr_schedule == "warmup-cosine" and not 0 < config.lr_warmup_steps < config.steps:
        raise HamucoError(f"warmup-cosine needs 0 < lr_warmup_steps < steps, got {config.lr_warmup_steps} "
                          f"and {config.steps}")
    ratio = config.min_lr / config.lr if config.lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, config.lr_schedule, steps=config.steps, warmup=config.lr_warmup_steps, min_ratio=ratio))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, fused (one pass over parameter, gradient and moments:
    0.10 s instead of 0.54 s per step for HaMuCo-ResNet-50's 133 M parameters on this 2-core CPU;
    the same update as the plain loop up to rounding)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def keep_freed_memory_in_process() -> bool:
    """Tell glibc's allocator to serve every allocation from its heap and never give freed memory back
    to the system (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, INT_MAX)``), for a process
    that trains on the CPU. A training step allocates and frees the same large buffers every time
    (autocast's bf16 weight copies, activations, gradients); by default glibc maps each one afresh and
    the first touch of every page faults. Measured on this 2-core CPU (HaMuCo-ResNet-50, 1×8 views,
    bf16): 5–15% shorter steps, peak RSS +0.1 GB. Process-wide, so called by the commands that train
    (``TrainModel``, ``bench/train.py``), not by :class:`Trainer`; ``HAMUCO_KEEP_FREED_MEMORY=0`` turns
    it off. Returns whether it was applied (glibc only)."""
    import ctypes
    import os
    import platform

    if os.environ.get("HAMUCO_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


class Trainer:
    def __init__(self, model: torch.nn.Module, dataset: Dataset, objective: Callable, config: TrainConfig,
                 out_dir: str | Path, architecture: Optional[dict] = None, provenance: Optional[dict] = None,
                 validation: Optional[Callable[[torch.nn.Module], dict]] = None):
        """``validation(model) -> {signal: value}``: run (the model in eval mode) every
        ``config.validate_every`` steps and at the last step, on data training never uses; it must leave
        the model's parameters and the RNG alone."""
        self.config = config
        self.validation = validation
        self.out = Path(out_dir)
        self.dataset = dataset
        self.objective = objective
        self.architecture = architecture or {"model": type(model).__name__}
        self.provenance = provenance or {}
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        self.world = torch.distributed.get_world_size() if self.distributed else 1
        # an unknown precision is refused there; what runs (fp32 or bf16), why, and on what; a resumed run keeps its checkpoint's (resume())
        self.precision: PrecisionChoice = resolve_precision(config.precision, "cpu", warn=self.rank == 0)
        torch.manual_seed(config.seed)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp = torch.nn.parallel.DistributedDataParallel(model) if self.distributed else model
        self.optimizer = make_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, config)
        self.state = TrainState()
        self._last_step: Optional[int] = None  # the step the file CHECKPOINT_LAST holds (None: unknown)
        if len(dataset) == 0:
            raise HamucoError("the training dataset is empty (no sample with a valid view)")

    # ------------------------------------------------------------------ state
    def _payload(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                "state": {"step": self.state.step, "epoch": self.state.epoch, "position": self.state.position,
                          "best": self.state.best},
                "architecture": self.architecture, "provenance": self.provenance,
                "config": asdict(self.config), "precision": self.precision.record()}

    def save(self, name: str = CHECKPOINT_LAST) -> Path:
        path = self.out / name
        if self.rank == 0:
            save_checkpoint(path, self._payload())
        if name == CHECKPOINT_LAST:
            self._last_step = self.state.step
        return path

    def resume(self, path: Optional[str | Path] = None) -> bool:
        """Load the last checkpoint (or ``path``); False when there is none to resume."""
        path = Path(path) if path else self.out / CHECKPOINT_LAST
        if not path.is_file():
            return False
        ckpt = load_checkpoint(path)
        check_architecture(ckpt, self.architecture, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.precision = self.precision.kept_from(recorded_precision(ckpt))
        st = ckpt["state"]
        self.state = TrainState(step=int(st["step"]), epoch=int(st["epoch"]), position=int(st["position"]),
                                best=st.get("best"))
        if path == self.out / CHECKPOINT_LAST:
            self._last_step = self.state.step
        return True

    # ------------------------------------------------------------------ data order
    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self.dataset))

    def _batches(self):
        """Yields batches forever from the saved data-order state; every rank sees its share.

        The state is advanced before a batch is handed out, so a checkpoint written after a
        step records exactly the data consumed so far; after an epoch's last batch it already
        points at the start of the next epoch.
        """
        per_step = self.config.batch_size * self.world
        while True:
            order = self._epoch_order(self.state.epoch)
            usable = len(order) - len(order) % per_step if len(order) >= per_step else len(order)
            starts = list(range(self.state.position, usable, per_step))
            if not starts:
                self.state.epoch += 1
                self.state.position = 0
                continue
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.state.epoch)
            mine = [order[s + self.rank: s + per_step: self.world] for s in starts]
            # its own generator: creating a loader must not draw from the global torch RNG (dropout's)
            loader = DataLoader(_Indexed(self.dataset, mine), batch_size=None, num_workers=self.config.num_workers,
                                generator=torch.Generator().manual_seed(self.config.seed + self.state.epoch))
            for i, batch in enumerate(loader):
                self.state.position += per_step
                if i == len(mine) - 1:
                    self.state.epoch += 1
                    self.state.position = 0
                yield batch

    # ------------------------------------------------------------------ validation
    def _board(self):
        """A TensorBoard writer into out/tensorboard (rank 0, ``config.tensorboard``); a resumed run
        purges what the interrupted one wrote past its checkpoint's step."""
        if self.rank != 0 or not self.config.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out / TENSORBOARD_DIR), purge_step=self.state.step + 1 if self.state.step else None)

    def _validation_due(self) -> bool:
        every = self.config.validate_every
        return (self.validation is not None and every > 0 and self.rank == 0
                and (self.state.step % every == 0 or self.state.step == self.config.steps))

    def _validate(self, path: Path, board) -> dict:
        """One validation pass: logged to validation.jsonl and TensorBoard; checkpoint-best.pt when the
        ``select_by`` signal is lower than the best so far."""
        t0 = time.perf_counter()
        self.model.eval()
        try:
            signals = {k: float(v) for k, v in self.validation(self.model).items()}
        finally:
            self.model.train()
        key = self.config.select_by
        if key not in signals:
            raise HamucoError(f"the validation pass gives no signal {key!r} (it gives {', '.join(sorted(signals))})")
        value = signals[key]
        best = self.state.best
        improved = math.isfinite(value) and (best is None or value < best["value"])
        if improved:
            self.state.best = {"step": self.state.step, "value": value, "key": key}
            self.save(CHECKPOINT_BEST)
        row = {"step": self.state.step, "seconds": round(time.perf_counter() - t0, 3), **signals,
               "best": improved}
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if board is not None:
            for k, v in signals.items():
                if math.isfinite(v):
                    board.add_scalar(f"validation/{k}", v, self.state.step)
            board.flush()
        return row

    # ------------------------------------------------------------------ loop
    def train(self, resume: bool = True, until: Optional[int] = None) -> dict:
        """Train to ``config.steps``; ``until`` stops early without a final checkpoint, as a kill would."""
        from tqdm import tqdm

        cfg = self.config
        if resume:
            self.resume()
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.jsonl"
        validation_path = self.out / VALIDATION_LOG
        for path in (metrics_path, validation_path):
            if self.rank == 0 and path.exists():  # drop what an interrupted run logged past the checkpoint
                atomic_write_text(path, "".join(line + "\n" for line in _metric_lines(path)
                                                if json.loads(line)["step"] <= self.state.step))
        board = self._board()
        if self.rank == 0:
            print(self.precision.line(), file=sys.stderr, flush=True)
        bar = tqdm(total=cfg.steps, initial=self.state.step, unit="step", desc="train",
                   disable=not cfg.progress or self.rank != 0)
        self.model.train()
        batches = self._batches()
        last_good = self.out / CHECKPOINT_LAST
        while self.state.step < cfg.steps:
            if until is not None and self.state.step >= until:
                bar.close()
                return {"steps": self.state.step, "checkpoint": None, "metrics": str(metrics_path)}
            t0 = time.perf_counter()
            batch = next(batches)
            with self.precision.autocast():
                losses = self.objective(self.ddp, batch, self.state.step)
            total = losses["total"].float()
            if not torch.isfinite(total):
                raise NonFiniteLoss(
                    f"loss is {float(total.detach())} at step {self.state.step}"
                    + (f"; the last good checkpoint is {last_good}" if last_good.is_file() else
                       "; no checkpoint was written yet"))
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            grad_norm = None
            if cfg.grad_clip:  # the norm before clipping is logged: a run near divergence shows in it
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            self.optimizer.step()
            self.scheduler.step()
            self.state.step += 1
            fault_point("train-step", str(self.state.step))
            record = {"step": self.state.step, "epoch": self.state.epoch, "lr": self.scheduler.get_last_lr()[0],
                      "seconds": round(time.perf_counter() - t0, 4), "precision": self.precision.precision,
                      **{k: float(v.detach()) for k, v in losses.items()}}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            if self.rank == 0:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if board is not None:
                    for k, v in losses.items():
                        board.add_scalar(f"loss/{k}", record[k], self.state.step)
                    board.add_scalar("lr", record["lr"], self.state.step)
            bar.update(1)
            bar.set_postfix(loss=f"{record['total']:.4f}")
            if self._validation_due():
                self._validate(validation_path, board)
            if self.state.step % cfg.checkpoint_every == 0 or self.state.step == cfg.steps:
                last_good = self.save(CHECKPOINT_LAST)
        bar.close()
        if board is not None:
            board.close()
        final = self.out / CHECKPOINT_FINAL
        if self.rank == 0:  # the last checkpoint holds the final state: the final one is a second name for it
            last = self.out / CHECKPOINT_LAST
            if last.is_file() and self._last_step == self.state.step:
                link_or_copy(last, final)
            else:
                self.save(CHECKPOINT_FINAL)
        if self.rank == 0:
            plot_loss_curve(metrics_path, self.out / "loss_curve.png",
                            validation_path if validation_path.exists() else None)
        return {"steps": self.state.step, "checkpoint": str(final), "metrics": str(metrics_path)}


def recorded_precision(ckpt: dict) -> Optional[str]:
    """The precision (fp32 or bf16) a checkpoint's run computed in: its ``precision`` record, or for a
    checkpoint written before runs recorded it, its configuration's explicit fp32/bf16 (None: unknown)."""
    rec = ckpt.get("precision")
    if isinstance(rec, dict) and rec.get("precision") in ("fp32", "bf16"):
        return rec["precision"]
    old = (ckpt.get("config") or {}).get("precision")
    return old if old in ("fp32", "bf16") else None


def _metric_lines(path: Path) -> list[str]:
    """The complete JSON lines of a metrics file (a kill mid-append can leave a partial last line)."""
    lines = []
    for line in Path(path).read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            continue
        lines.append(line)
    return lines


class _Indexed(torch.utils.data.Dataset):
    """Batches of a dataset by explicit index lists (one item = one collated batch)."""

    def __init__(self, dataset: Dataset, batches: list):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return _collate([self.dataset[int(j)] for j in self.batches[i]])


def plot_loss_curve(metrics_path: Path, png: Path, validation_path: Optional[Path] = None) -> None:
    """The training losses per step (log scale) and, with a validation log, its signals beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in _metric_lines(metrics_path)]
    if not rows:
        return
    val = [json.loads(line) for line in _metric_lines(validation_path)] if validation_path else []
    keys = [k for k in rows[0] if k not in ("step", "epoch", "lr", "seconds", "precision")]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(13 if val else 7, 4), squeeze=False)
    ax = axes[0, 0]
    steps = [r["step"] for r in rows]
    for k in keys:
        vals = [r.get(k, math.nan) for r in rows]
        ax.plot(steps, vals, label=k, lw=1.5 if k == "total" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if val:
        ax = axes[0, 1]
        vsteps = [r["step"] for r in val]
        for k in val[0]:
            if k in ("step", "seconds", "best"):
                continue
            vals = [r.get(k, math.nan) for r in val]
            if any(math.isfinite(v) for v in vals):
                ax.plot(vsteps, vals, marker="o", ms=3, label=k, lw=1.5 if k == "label_signal" else 1.0)
        best = [r for r in val if r.get("best")]
        if best:
            ax.axvline(best[-1]["step"], color="k", ls=":", lw=1, label=f"best (step {best[-1]['step']})")
        ax.set_xlabel("step")
        ax.set_ylabel("validation (px, mm, deg)")
        ax.set_title("held-out frames", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
