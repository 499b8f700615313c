"""Helpers shared by the benchmark scripts: what machine this is, and which planctl runs."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model", "Processor"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def usable_cores() -> str:
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return str(total)
    return str(total) if usable == total else f"{usable} usable of {total}"


def find_planctl() -> Path:
    bindir = Path(sys.executable).parent
    for name in ("planctl", "planctl.exe"):
        if (bindir / name).is_file():
            return bindir / name
    sys.exit(f"error: no 'planctl' executable next to {sys.executable}; "
             "run this with the interpreter of the environment where planctl is installed")
