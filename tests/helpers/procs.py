"""Spawned worker processes for the concurrency tests (SQLite and PostgreSQL alike).

Spawning costs about a second a process, so a module starts its processes once
(a module-scoped fixture) and hands them work: `run("worker", [args, ...])`
calls `worker(*args, barrier, results)` of that test module in each process,
where every worker waits at `barrier` so that they all start at the same
moment, and puts its outcome tuple on `results`. A worker that raises is
reported as ("crash", ...), never left hanging.
"""

from __future__ import annotations

import importlib
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def _serve(module: str, tasks: Any, barrier: Any, results: Any) -> None:
    functions = importlib.import_module(module)
    while (task := tasks.get()) is not None:
        name, args = task
        try:
            getattr(functions, name)(*args, barrier, results)
        except BaseException as exc:  # report instead of dying silently
            results.put(("crash", f"{name}: {type(exc).__name__}: {exc}"))


class Processes:
    def __init__(self, module: str, count: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.barrier, self.results = ctx.Barrier(count), ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(count)]
        self.procs = [ctx.Process(target=_serve, args=(module, t, self.barrier, self.results), daemon=True)
                      for t in self.tasks]
        for p in self.procs:
            p.start()

    def run(self, worker: str, args: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """One call of `worker` in each process (with that process's arguments); their outcomes."""
        assert len(args) == len(self.tasks)
        for queue, arguments in zip(self.tasks, args):
            queue.put((worker, arguments))
        outcomes = [self.results.get(timeout=180) for _ in args]
        if self.barrier.broken:
            self.barrier.reset()
        assert not [o for o in outcomes if o[0] == "crash"], outcomes
        return outcomes

    def close(self) -> None:
        for queue in self.tasks:
            queue.put(None)
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from planctl.store.writelock import WriteLock
    lock = WriteLock(Path(sys.argv[1]))
    lock.acquire()
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    released = time.monotonic()  # read while it still holds the lock: a waiter can only get it after
    lock.release()
    print("released", released, flush=True)
    time.sleep(0.5)
""")


def holder(db: Path, seconds: float) -> subprocess.Popen[str]:
    """A process holding the metering write lock of `db` for `seconds` (store/writelock.py); it
    prints 'released <monotonic time>' when it lets go."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc
