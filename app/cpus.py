"""How many CPUs this process may use: shared by the service's settings, training and the benchmarks.

It lives beside the contract rather than in ``app.settings`` so that training can size its
TensorFlow pools without importing the service's configuration.
"""

import os


def available_cpus() -> int:
    """CPUs this process may run on (the container's cpuset or affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
