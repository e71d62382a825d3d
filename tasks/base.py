"""What every task of this project shares: parameters checked at construction, a one-line failure
explanation for user errors, and the ``task-done`` fault point (``model.atomic``).

A task's ``checks`` maps a parameter name to ``(predicate, what it must be)``; a value out of range
raises :class:`~model.errors.HamucoError` naming the task, the parameter and the value when the
task object is made, before anything runs or any output is written.
"""
from __future__ import annotations

import functools
import math
import json
import os
from pathlib import Path
from typing import Callable, ClassVar

import luigi

from model.atomic import fault_point
from model.errors import HamucoError

Check = tuple[Callable[[object], bool], str]


def at_least(low: float) -> Check:
    return (lambda v: v is not None and v >= low, f"at least {low:g}")


def in_range(low: float, high: float, high_open: bool = False) -> Check:
    if high_open:
        return (lambda v: v is not None and low <= v < high, f"in [{low:g}, {high:g})")
    return (lambda v: v is not None and low <= v <= high, f"in [{low:g}, {high:g}]")


def positive_finite() -> Check:
    return (lambda v: v is not None and math.isfinite(v) and v > 0, "a positive finite number")


def optional(check: Check) -> Check:
    fn, what = check
    return (lambda v: v is None or fn(v), f"{what} (or unset)")


class HamucoTask(luigi.Task):
    """Base of the project's tasks."""

    checks: ClassVar[dict[str, Check]] = {}

    def __init_subclass__(cls, **kwargs):
        """Every ``run`` starts at the ``task-start`` fault point (Luigi's START event handlers cannot
        fail a task: Luigi catches what they raise)."""
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "_fault_point", False):
            @functools.wraps(run)
            def run_from_fault_point(self, *args, **kw):
                fault_point("task-start", self.task_family)
                return run(self, *args, **kw)

            run_from_fault_point._fault_point = True
            cls.run = run_from_fault_point

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_parameters()

    def check_parameters(self) -> None:
        rules: dict[str, Check] = {}
        for klass in reversed(type(self).__mro__):  # mixins add their own rules
            rules.update(getattr(klass, "checks", {}) or {})
        params = dict(self.get_params())
        for name, (ok, what) in rules.items():
            if name not in params:
                continue
            value = getattr(self, name)
            try:
                good = bool(ok(value))
            except TypeError:
                good = False
            if not good:
                option = "--" + name.replace("_", "-")
                raise HamucoError(f"{self.task_family}: parameter {name} ({option}) must be {what}, got {value!r}")

    def on_success(self):
        fault_point("task-done", self.task_family)
        return super().on_success()

    def on_failure(self, exception):
        if isinstance(exception, HamucoError):  # what the scheduler shows (luigid's page): the message
            return f"{type(exception).__name__}: {exception}"
        return super().on_failure(exception)


def option_values(items: list[str], flag: str = "--train") -> dict:
    """``OPTION=VALUE`` pairs (of a repeatable command-line flag) → {option: value}; a value that reads as
    JSON (a number, true, a list) is taken as such, and dashes in names become underscores."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HamucoError(f"{flag} takes OPTION=VALUE, got {item!r}")
        try:
            out[name.replace("-", "_")] = json.loads(value)
        except ValueError:
            out[name.replace("-", "_")] = value
    return out


def check_output_dir(path: str | os.PathLike, option: str = "--out", file: bool = False) -> Path:
    """Refuse an output directory (or, with ``file``, the directory of an output file) that cannot be
    created or written, without creating anything."""
    path = Path(path).expanduser()
    probe = path.parent if file else path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == path and not file:
            raise HamucoError(f"{path}: {option} must be a directory, but this is a file")
        raise HamucoError(f"{path}: cannot create the output {'file' if file else 'directory'} ({option}): "
                          f"{probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HamucoError(f"{path}: cannot write the output directory ({option}): {probe} is not writable")
    return path
