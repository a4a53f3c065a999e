"""Operational logs: JSON lines on stderr at the configured level, for the gateway and
uvicorn alike. The audit trail is separate (`gateway.audit`); nothing here logs tokens,
parameter values or secrets.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line, naming the replica that wrote it (`[server] replica`)."""

    def __init__(self, replica: str | None = None) -> None:
        super().__init__()
        self.replica = replica

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "replica": self.replica,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure_logging(level: str, replica: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter(replica))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # sqlglot explains each statement it cannot parse; the policy's denial already says why.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    # The MCP SDK logs the end of every stateless request at info; the audit record says more.
    logging.getLogger("mcp").setLevel(max(LEVELS[level], logging.WARNING))
