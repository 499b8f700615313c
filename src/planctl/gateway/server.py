"""Running the app under uvicorn: one process, or a supervisor and N workers on one socket.

SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (up to the grace period), settle
what they used (the app's shutdown waits for streams still draining), exit 0.
"""

from __future__ import annotations

import importlib.util
from types import FrameType

import uvicorn

from planctl.gateway import logs

APP = "planctl.gateway.app:create_app"


class Server(uvicorn.Server):
    """uvicorn's server, except that a signal that shut it down gracefully is not raised again
    afterwards (uvicorn does, which would end the process with -SIGTERM instead of 0)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def config(*, host: str, port: int, workers: int, log_format: str, grace: float) -> uvicorn.Config:
    fast = importlib.util.find_spec("uvloop") is not None and importlib.util.find_spec("httptools") is not None
    return uvicorn.Config(APP, factory=True, host=host, port=port, workers=workers, access_log=False,
                          log_config=logs.config(log_format), timeout_graceful_shutdown=grace,
                          loop="uvloop" if fast else "asyncio", http="httptools" if fast else "h11",
                          lifespan="on", server_header=False, backlog=2048)


def run(*, host: str, port: int, workers: int, log_format: str, grace: float) -> None:
    cfg = config(host=host, port=port, workers=workers, log_format=log_format, grace=grace)
    server = Server(cfg)
    if workers == 1:
        server.run()
        return
    from uvicorn.supervisors import Multiprocess

    sock = cfg.bind_socket()
    try:
        Multiprocess(cfg, sockets=[sock]).run()  # each worker a uvicorn server; SIGTERM drains them
    finally:
        sock.close()
