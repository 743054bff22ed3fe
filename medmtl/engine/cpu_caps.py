"""What this CPU computes natively, read from the operating system without importing torch.

Used to pick the CPU inference precision: on a CPU with native bfloat16 dot products
(AVX512-BF16 or AMX-BF16; AMD Zen 4+, Intel Cooper Lake / Sapphire Rapids+), oneDNN's bf16
convolutions run the working model's 32³ windows 1.34× faster than float32 (2.2× for 64³
windows) with the same detections (bench/RESULTS.md, "CPU bf16 inference"). Without those
instructions bf16 is emulated, so the default there stays float32.
The no-op rerun of ``medmtl predict`` must resolve ``--amp auto`` before torch is imported,
hence ``/proc/cpuinfo`` here rather than ``torch.cpu``'s private probes.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

#: CPU flags (Linux ``/proc/cpuinfo``) that make bfloat16 matrix products native.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: Environment variable that overrides the probe: ``1`` (treat as native) or ``0`` (never).
ENV_OVERRIDE = "MEDMTL_CPU_BF16"


@lru_cache(maxsize=1)
def cpu_native_bf16() -> bool:
    """Whether this CPU has native bfloat16 matrix instructions.

    ``MEDMTL_CPU_BF16=0`` or ``1`` overrides the probe; elsewhere than Linux (no
    ``/proc/cpuinfo``) the answer is ``False``.
    """
    forced = os.environ.get(ENV_OVERRIDE, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(NATIVE_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def cpu_auto_amp(*, inference: bool) -> str:
    """What ``--amp auto`` means on this CPU: ``bf16`` for inference on a CPU with native bf16
    (:func:`cpu_native_bf16`), ``off`` otherwise and for every training step."""
    return "bf16" if inference and cpu_native_bf16() else "off"
