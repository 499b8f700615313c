"""Helpers shared by the benchmark scripts: what machine this is, and which planctl runs."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
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


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one subprocess in milliseconds (output discarded); a failing command stops the
    benchmark with its first error lines."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv[:6])} exited {proc.returncode}: "
                 f"{proc.stderr.decode(errors='replace').strip()[:400]}")
    return elapsed
