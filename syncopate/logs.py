"""Structured logs: one JSON object per line, with the process's role (driver, host-N, gw-ID)."""
from __future__ import annotations

import logging

import orjson

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "role": self.role,
               "logger": record.name, "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "INFO", role: str = "driver") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_syncopate", False):
            root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(role))
    handler._syncopate = True
    root.addHandler(handler)
    root.setLevel(level)


__all__ = ["setup_logging", "JsonFormatter"]
