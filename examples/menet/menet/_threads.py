"""CPU threads that wait politely: a passive OpenMP wait policy and a sensible thread count.

On a machine whose cores are shared with other jobs, OpenMP's default "active"
waiting makes every idle thread of torch's pool spin on a core for a while
after each parallel region; the demo took 61 minutes instead of 1:45 that way.
``OMP_WAIT_POLICY`` is read by the OpenMP runtime when torch loads it, so this
module sets it (unless already set) before importing torch; ``menet/__init__``
imports it first. :func:`configure_threads` then caps torch's intra-op threads
at the CPUs this process may run on, unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # after setting the environment variable, on purpose

__all__ = ["available_cpus", "configure_threads"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one).

    >>> available_cpus() >= 1
    True
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def configure_threads() -> int:
    """Cap torch's intra-op threads at :func:`available_cpus` unless ``OMP_NUM_THREADS`` is set.

    Returns the thread count in use.
    """
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(min(torch.get_num_threads(), available_cpus()))
    return torch.get_num_threads()
