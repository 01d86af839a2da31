"""This machine's memory, for refusing work that cannot fit before allocating it."""
from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)  # asked on every search call (two sysconf calls); it does not change
def physical_memory() -> int | None:
    """Physical memory in bytes, or None where the platform does not say (not POSIX)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return total if total > 0 else None
