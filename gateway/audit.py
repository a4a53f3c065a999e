"""One audit record per request, as a JSON line, on its own sink (stdout, a file, or off).

Owns the record's fields, writing them, the optional hash chain (each record
carries the SHA-256 of the line before it, so a removed or edited line is detectable) and
its verification, and reopening a file sink for log rotation. Never the token, parameter
values or any secret: the record is built from named fields only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

FLUSH_DELAY = 0.05
SUMMARY_REASON = 100  # characters of a denial's reason on a summary line; the record has all of it
GENESIS = "0" * 64  # the `prev` of the first record of a chain that starts in an empty file


@dataclass
class AuditRecord:
    requestId: str
    traceId: str
    endpoint: str
    channel: str = "http"  # "http" (/v1, /sql) or "mcp" (/mcp)
    mcpClient: str | None = None  # the name the MCP client gave in its clientInfo
    mcpMethod: str | None = None  # the JSON-RPC method of an MCP request
    mcpTool: str | None = None  # the tool an MCP tools/call called
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
    credential: str | None = None  # the temporary database login issued, revoked or expired
    approval: str | None = None  # the approval request asked for, decided or run: links the three
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


def line_hash(line: bytes) -> str:
    """The chain link: SHA-256 of a record's line, without its newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _last_line(path: Path) -> bytes | None:
    """The last non-empty line of a file, read from its end (audit files grow large)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = min(size, 64 * 1024)
        while block:
            handle.seek(size - block)
            lines = handle.read(block).rstrip(b"\n").split(b"\n")
            if len(lines) > 1 or block == size:
                return lines[-1] or None
            block = min(size, block * 2)
    return None


class AuditSink:
    """Writes records to `target`: "stdout", "off", or a file path (`{pid}` in it becomes the
    process id, so several workers can each keep an unbroken chain). Each record names the
    replica that wrote it (`[server] replica`)."""

    def __init__(self, target: str, *, chain: bool = False, summary: bool = False, replica: str | None = None) -> None:
        self.target = target
        self.chain = chain
        self.summary = summary
        self.replica = replica
        self._prev = GENESIS
        self._stream: IO[bytes] | None = None
        self._flush_pending = False
        self._path = Path(target.replace("{pid}", str(os.getpid()))) if target not in ("stdout", "off") else None
        self._open()

    def _open(self) -> None:
        if self.target == "off":
            self._stream = None
        elif self._path is None:
            self._stream = sys.stdout.buffer
        else:
            if self.chain and self._prev == GENESIS and self._path.exists():
                last = _last_line(self._path)
                self._prev = line_hash(last) if last else GENESIS
            self._stream = open(self._path, "ab")  # noqa: SIM115 - held open until reopened or closed

    def reopen(self) -> None:
        """For log rotation (SIGHUP): close the file and open the path again. The chain runs on
        across files: the first record of the new file links to the last of the old one."""
        if self._path is None:
            return
        self.flush()
        if self._stream is not None:
            self._stream.close()
        self._open()

    def write(self, record: AuditRecord) -> None:
        if self._stream is None and not self.summary:
            return
        fields = record.finished()
        fields["replica"] = self.replica
        if self.summary:
            sys.stderr.write(summary_line(fields) + "\n")
        if self._stream is None:
            return
        if self.chain:
            fields["prev"] = self._prev
        line = orjson.dumps(fields)
        if self.chain:
            self._prev = line_hash(line)
        self._stream.write(line + b"\n")
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


def summary_line(fields: dict[str, Any]) -> str:
    """A record as a terminal shows it: `200 orders-worker POST /v1/query 3.1ms 1 row`, and the
    reason of a denial or failure."""
    rows = fields["rows"]
    who = fields["identity"] or fields["sub"] or "-"
    line = f"{fields['status']} {who} {fields['endpoint']} {fields['durationMs']:.1f}ms {rows} row{'s' * (rows != 1)}"
    reason = fields["reason"]
    if not reason or fields["status"] < 400:
        return line
    return f"{line}: {reason if len(reason) <= SUMMARY_REASON else reason[: SUMMARY_REASON - 1] + '…'}"


@dataclass(frozen=True)
class ChainBreak:
    line: int  # 1-based line number of the first record whose link does not hold
    problem: str


def verify_chain(lines: Iterable[bytes], *, from_genesis: bool = False) -> tuple[int, ChainBreak | None]:
    """Check every record's `prev` against the line before it. Returns the number of records
    and the first break, if any. The first record may link to a rotated-away file unless
    `from_genesis` says the chain must start here."""
    prev: str | None = None
    count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip(b"\n")
        if not line:
            continue
        count += 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return count, ChainBreak(number, "not a JSON record")
        link = record.get("prev") if isinstance(record, dict) else None
        if not isinstance(link, str):
            return count, ChainBreak(number, "record has no prev link")
        expected = prev if prev is not None else (GENESIS if from_genesis else link)
        if link != expected:
            return count, ChainBreak(number, "prev does not match the line before: a record was removed or edited")
        prev = line_hash(line)
    return count, None
