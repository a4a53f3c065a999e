"""One audit record per request, as a JSON line, on its own sink (stdout, a file, or off).

Owns the record's fields (SPEC §6) and writing them. Never the token, parameter values or
any secret: the record is built from named fields only.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

FLUSH_DELAY = 0.05


@dataclass
class AuditRecord:
    requestId: str
    traceId: str
    endpoint: str
    clientIp: str | None = None
    userAgent: str | None = None
    issuer: str | None = None
    sub: str | None = None
    identity: str | None = None
    role: str | None = None
    kind: str | None = None
    tables: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    decision: str | None = None  # "allow" | "deny" | None when no statement was judged
    reason: str | None = None
    status: int = 0
    sqlstate: str | None = None
    rows: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.perf_counter)

    def finished(self) -> dict[str, Any]:
        # A shallow copy: the record is encoded at once (dataclasses.asdict deep-copies,
        # which costs more than the rest of the audit path together).
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        record: dict[str, Any] = {"ts": stamp}
        record.update(vars(self))
        record["durationMs"] = round((time.perf_counter() - record.pop("started")) * 1000, 3)
        return record


class AuditSink:
    def __init__(self, target: str) -> None:
        self._stream: IO[bytes] | None
        if target == "off":
            self._stream = None
        elif target == "stdout":
            self._stream = sys.stdout.buffer
        else:
            self._stream = open(target, "ab")  # noqa: SIM115 - held open for the process's life
        self._flush_pending = False

    def write(self, record: AuditRecord) -> None:
        if self._stream is None:
            return
        self._stream.write(orjson.dumps(record.finished(), option=orjson.OPT_APPEND_NEWLINE))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Under load, one write system call per burst of records instead of one per request:
        records reach the sink within FLUSH_DELAY seconds (and at once outside a server)."""
        if self._flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        if self._stream is not None and not self._stream.closed:
            self._stream.flush()

    def close(self) -> None:
        self.flush()
        if self._stream is not None and self._stream is not sys.stdout.buffer:
            self._stream.close()
