"""Log lines of `planctl serve`: text for people, or one JSON object per line for collectors.
Keys never appear: requests are logged by request id, key id and model."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, ensure_ascii=False)


def config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """A logging.config dict for uvicorn and the gateway."""
    formatter: dict[str, Any] = ({"()": "planctl.gateway.logs.JsonFormatter"} if fmt == "json" else
                                 {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"})
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"main": formatter},
            "handlers": {"main": handler},
            "loggers": {name: {"handlers": ["main"], "level": level, "propagate": False}
                        for name in ("uvicorn", "uvicorn.error", "planctl.gateway")}}
