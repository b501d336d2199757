"""How many CPUs this process may really use.

``os.cpu_count()`` counts the machine's CPUs, not those this process is allowed to run
on: in a container or under ``taskset`` it overstates them, and a thread pool sized by it
oversubscribes the cores. :func:`available_cpus` takes the smallest of the CPU affinity
mask (``os.sched_getaffinity``), the cgroup's CPU quota (``cpu.max`` of cgroup v2, or
v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) and ``$SELECTIVITY_CPUS`` when set.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus"]


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota, or None when there is none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process can use: affinity mask, cgroup quota and ``$SELECTIVITY_CPUS``."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    limit = os.environ.get("SELECTIVITY_CPUS", "").strip()
    if limit:
        try:
            n = min(n, int(limit))
        except ValueError:
            raise ValueError(f"SELECTIVITY_CPUS={limit!r}: expected a whole number of CPUs") \
                from None
    return max(1, n)
