"""Which floating-point precision a device computes fast, and the choice a run makes from it.

bf16 autocast pays only where the hardware computes bf16 natively: a CPU with AVX512_BF16 or AMX
(oneDNN then runs bf16 convolutions and matrix products at up to twice the fp32 rate), or a CUDA
device with bf16 support. On a CPU with AVX2 but no native bf16 (most AMD Zen 1-3 and many Intel
CPUs) oneDNN emulates bf16, and the same training step is 10-18x *slower* than fp32 (measured on a
2-core AMD EPYC, AVX2: ResNet-50 forward+backward of 8 crops at 256², 3.2 s fp32 against 58 s bf16).

``"auto"`` therefore resolves to bf16 only where it is native and to fp32 everywhere else; an
explicit ``"bf16"`` still runs where it is emulated, with one warning per process. The choice, the
reason and what it was based on (CPU model and capability, GPU name) are a :class:`PrecisionChoice`,
which runs print (:meth:`PrecisionChoice.line`) and record (:meth:`PrecisionChoice.record`) in their
checkpoints and metrics.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .errors import HamucoError

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

_warned: set = set()


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset]:
    """(model name, flags) of the first processor in /proc/cpuinfo; ("", {}) where there is none."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def cpu_model() -> str:
    import platform

    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here ("AVX2", "AVX512", ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old or unusual builds
        return "unknown"


def cpu_native_bf16_flags() -> list[str]:
    """The CPU flags that give native bf16 arithmetic (AVX512_BF16, AMX-BF16) present on this CPU."""
    return [f for f in NATIVE_BF16_CPU_FLAGS if f in _cpuinfo()[1]]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX-BF16 in its flags).

    ``HAMUCO_NATIVE_BF16=1`` or ``0`` overrides the detection (a CPU this code does not know, or a
    test of the other kind of machine). Where /proc/cpuinfo cannot be read (not Linux), torch's own
    check that oneDNN can run bf16 fast is asked instead."""
    override = os.environ.get("HAMUCO_NATIVE_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1"
    if _cpuinfo()[1]:
        return bool(cpu_native_bf16_flags())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def cuda_has_bf16(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the keyword
        return bool(torch.cuda.is_bf16_supported())


def native_bf16(device: str | torch.device = "cpu") -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return cuda_has_bf16(device)
    return device.type == "cpu" and cpu_has_native_bf16()


def hardware(device: str | torch.device = "cpu") -> dict:
    """What a figure or a run was made on: CPU model, capability, native-bf16 flags, threads, GPU."""
    device = torch.device(device)
    info = {"cpu_model": cpu_model(), "cpu_capability": cpu_capability(),
            "cpu_native_bf16": cpu_has_native_bf16(), "cpu_bf16_flags": cpu_native_bf16_flags(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device),
            "gpu": None}
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes in, and why."""

    requested: str  # auto, fp32 or bf16
    precision: str  # fp32 or bf16: what runs
    device: str
    native_bf16: bool
    reason: str
    cpu_model: str
    cpu_capability: str
    gpu: Optional[str] = None

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def line(self) -> str:
        """One line for a run's output: ``precision: fp32 (auto: ...)``."""
        return f"precision: {self.precision} ({self.requested}: {self.reason})"

    def record(self) -> dict:
        return asdict(self)

    def autocast(self):
        """The autocast context of this choice (a no-op for fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def kept_from(self, recorded: Optional[str]) -> "PrecisionChoice":
        """This choice, or the precision a resumed run was started with when it differs (a resumed
        run never changes precision silently: the line says what was kept and what this machine
        would have chosen)."""
        if recorded is None or recorded == self.precision:
            return self
        if recorded not in ("fp32", "bf16"):
            raise HamucoError(f"the checkpoint records an unknown precision {recorded!r}")
        why = (f"kept from the checkpoint this run resumes; {self.requested} here would choose "
               f"{self.precision}")
        if recorded == "bf16" and not self.native_bf16:
            why += "; bf16 is emulated on this device and slow"
        return PrecisionChoice(self.requested, recorded, self.device, self.native_bf16, why, self.cpu_model,
                               self.cpu_capability, self.gpu)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}" if torch.cuda.is_available() else "GPU"
    return f"this CPU ({cpu_model()}, {cpu_capability()})"


def resolve_precision(requested: str = "auto", device: str | torch.device = "cpu",
                      warn: bool = True) -> PrecisionChoice:
    """``auto``: bf16 where ``device`` computes it natively, else fp32. ``bf16`` on a device without
    native bf16 runs, with one warning per process (stderr). ``fp32`` is always fp32."""
    if requested not in PRECISIONS:
        raise HamucoError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    device = torch.device(device)
    native = native_bf16(device)
    where = describe_device(device)
    flags = cpu_native_bf16_flags() if device.type == "cpu" else []
    if requested == "fp32":
        precision, reason = "fp32", "as asked"
    elif requested == "bf16":
        precision = "bf16"
        reason = "as asked" + ("" if native else f"; {where} has no native bf16: emulated, 10-18x slower than fp32")
        if not native and warn and device.type not in _warned:
            _warned.add(device.type)
            print(f"warning: bf16 requested but {where} has no native bf16 (AVX512_BF16/AMX); it runs emulated, "
                  "typically 10-18x slower than fp32. Use --precision auto or fp32.", file=sys.stderr, flush=True)
    elif native:
        precision = "bf16"
        reason = f"{where} computes bf16 natively" + (f" ({', '.join(flags)})" if flags else "")
    else:
        precision = "fp32"
        reason = f"{where} has no native bf16 (no AVX512_BF16/AMX); bf16 would be emulated and slower"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" and torch.cuda.is_available() else None
    return PrecisionChoice(requested, precision, str(device), native, reason, cpu_model(), cpu_capability(), gpu)


def as_float32(obj):
    """``obj`` with every floating tensor in it as float32: tensors, dataclasses (such as a network's
    output), tuples, lists and dicts, recursively. What bf16 autocast hands back becomes what fp32
    code downstream (metrics, NumPy) expects."""
    import dataclasses

    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: as_float32(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(as_float32(x) for x in obj)
    if isinstance(obj, list):
        return [as_float32(x) for x in obj]
    if isinstance(obj, dict):
        return {k: as_float32(v) for k, v in obj.items()}
    return obj


def run_in(choice: Optional[PrecisionChoice], fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in ``choice``'s precision (None or fp32: as it is), outputs as float32."""
    if choice is None or not choice.bf16:
        return fn(*args, **kwargs)
    with choice.autocast():
        out = fn(*args, **kwargs)
    return as_float32(out)
