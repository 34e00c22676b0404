"""The host process's memory: what it holds now, and freed memory handed back to the system.

Both serve the memory plan (e2h/memory.py): a CPU rank's runtime term is its resident memory
before any model, and the plan's peak holds only if freed tensors leave the process. That costs
a mapping and its page faults per large tensor (a third of the CPU time of a small model's
run), so train.py pays it only where the plan is tight (``e2h.memory_check.for_run``).
"""
from __future__ import annotations

import os


def return_freed_memory(threshold: int = 64 * 1024) -> bool:
    """Serve every CPU allocation of ``threshold`` bytes or more with its own mapping (glibc
    mallopt M_MMAP_THRESHOLD; MALLOC_MMAP_THRESHOLD_ in the environment wins), so a freed tensor
    goes back to the system. glibc by default raises this threshold to 32 MB after the first
    large free and keeps smaller blocks in its arenas, which return memory only from the top:
    a CPU run's freed activations and FSDP2 blocks then stay resident, up to twice the plan
    (bench/README.md, "Memory"). False where there is no glibc or the variable is set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    import ctypes
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-3, threshold) == 1   # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
