"""Loading tensors from files people hand us: ``torch.load(..., weights_only=True)`` and nothing else.

A refused or broken file becomes :class:`~model.errors.HamucoError` naming the file and saying what
is wrong in words. PyTorch's own refusal suggests re-running with ``weights_only=False``; that
advice (loading an untrusted pickle runs its code) is never passed on.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from .errors import HamucoError

_UNSAFE_ADVICE = re.compile(r"weights_only|arbitrary code|trusted source|torch\.load|add_safe_globals|"
                            r"safe_globals|documentation", re.IGNORECASE)


def describe_load_error(exc: BaseException) -> str:
    """What went wrong reading a tensor file, without PyTorch's advice to unpickle it unsafely."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        m = re.search(r"GLOBAL ([\w.]+)", text)
        if m or "global" in text.lower():
            what = f" ({m.group(1)})" if m else ""
            return (f"the file holds Python objects other than tensors{what}; it was refused, since "
                    "unpickling them could run code. Only plain weights and checkpoints are loaded")
        m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        return f"not a PyTorch file, or a truncated or corrupt one ({m.group(1).strip() if m else 'bad pickle'})"
    if isinstance(exc, RuntimeError) and "central directory" in text:
        return "not a PyTorch file, or a truncated one (no zip central directory)"
    keep = [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip() and not _UNSAFE_ADVICE.search(s)]
    detail = f"{type(exc).__name__}: {' '.join(keep)[:200]}" if keep else type(exc).__name__
    if isinstance(exc, (OSError,)) and not isinstance(exc, (EOFError,)):
        return detail
    return f"not a PyTorch file, or a truncated or corrupt one ({detail})"


def safe_torch_load(path: str | os.PathLike, what: str, error: type = HamucoError):
    """``torch.load(path, map_location="cpu", weights_only=True)``; ``what`` names the file's role
    in the error message ("checkpoint", "backbone weights", ...)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise error(f"{path}: cannot load the {what}: {describe_load_error(exc)}") from None
