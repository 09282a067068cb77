"""How many CPUs this process may use: shared by the service's settings, training and the benchmarks.

It lives beside the contract rather than in ``app.settings`` so that training can size its
TensorFlow pools without importing the service's configuration.
"""

import os
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may run on (the container's cpuset or affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# /proc/cpuinfo flags of the instructions that make bfloat16 convolutions fast in oneDNN.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (empty where /proc/cpuinfo is not readable, e.g. outside Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_bfloat16(flags: frozenset[str]) -> bool:
    return bool(flags & BFLOAT16_CPU_FLAGS)
