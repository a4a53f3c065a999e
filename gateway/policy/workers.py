"""Statement analysis in worker processes, each within a time budget.

Parsing a caller's text can cost far more than its size suggests (sqlglot is exponential in
nested `ARRAY[`, PostgreSQL's scanner quadratic in nested block comments), and a parse cannot
be interrupted from inside Python. So a text the caches have not seen is analysed in one of
a few worker processes; one that takes longer than `analysis_timeout` is killed, replaced,
and the statement denied. The event loop only sends the text and waits, so every other
request, `/healthz` and SIGTERM go on meanwhile. The defence knows no patterns: whatever
makes a parser slow, the budget bounds it.

Workers are forked from a forkserver that has the analyser imported already, so a
replacement is ready in milliseconds, not the second a fresh interpreter needs.

The budget is wall-clock time, so that every answer is bounded; but on a busy machine a
cheap text can miss it because its worker barely ran. Where the worker's CPU time can be read
(`/proc` on Linux), a text whose worker used less than half the budget is not called too
complex: the request is answered 503 (retry) and nothing is remembered against the text.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from gateway.policy.analysis import analyze
from gateway.policy.facts import Denial, StatementFacts

TOO_SLOW = "analysis_timeout"  # the denial's category; also counted by the metrics
# A text that took too long is refused again without a worker for this long, so repeating it
# costs nothing; after that it may be tried again (the machine may have been busy).
SLOW_TEXT_MEMORY_SECONDS = 60.0
SLOW_TEXT_MEMORY_SIZE = 1024


class AnalyserBusy(Exception):
    """No worker became free in time, or the machine was too busy for the worker to finish a
    text that is not itself expensive: retry."""


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _serve(connection: Connection, max_bytes: int) -> None:
    """A worker: texts in, facts out, until the gateway closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's to handle
    while True:
        try:
            sql = connection.recv()
        except (EOFError, OSError):
            return
        connection.send(analyze(sql, max_bytes))


class _Worker:
    def __init__(self, context: multiprocessing.context.BaseContext, max_bytes: int) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, max_bytes), daemon=True)
        self.process.start()
        child.close()

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.process.pid) if self.process.pid is not None else None

    async def analyse(self, sql: str, timeout: float) -> StatementFacts:
        """Raises TimeoutError past `timeout`, EOFError when the worker died."""
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        descriptor = self.connection.fileno()
        loop.add_reader(descriptor, lambda: answered.done() or answered.set_result(None))
        try:
            self.connection.send(sql)
            await asyncio.wait_for(answered, timeout)
        finally:
            loop.remove_reader(descriptor)
        return self.connection.recv()

    def kill(self) -> None:
        self.process.kill()
        self.connection.close()

    async def reap(self) -> None:
        await asyncio.to_thread(self.process.join)


class AnalysisPool:
    """`size` workers, each text analysed within `timeout` seconds; `on_timeout` is told of
    every worker killed for running past it."""

    def __init__(self, size: int, timeout: float, max_bytes: int, on_timeout: Callable[[], None]) -> None:
        self.size = size
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.on_timeout = on_timeout
        self._context = multiprocessing.get_context("forkserver")
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._slow: dict[str, float] = {}  # text -> when it may be tried again
        self._background: set[asyncio.Task] = set()

    async def start(self) -> None:
        # The forkserver imports the analyser once; every worker is forked from it, warm.
        self._context.set_forkserver_preload(["gateway.policy.analysis"])
        for _ in range(self.size):
            self._put_idle(await asyncio.to_thread(self._spawn))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        for worker in list(self._workers):
            worker.kill()
            await worker.reap()
        self._workers.clear()

    def _spawn(self) -> _Worker:
        worker = _Worker(self._context, self.max_bytes)
        self._workers.add(worker)
        return worker

    def _put_idle(self, worker: _Worker) -> None:
        self._idle.put_nowait(worker)

    async def analyse(self, sql: str) -> StatementFacts:
        """The facts of one text, or a denial saying it took too long. Raises `AnalyserBusy`
        when no worker frees up within the budget (each one does within it, unless texts
        queue up faster than they are analysed), or the machine kept the worker from
        finishing a text that did not use the budget's CPU."""
        if self._recently_slow(sql):
            return self._too_slow()
        try:
            worker = await asyncio.wait_for(self._idle.get(), self.timeout)
        except TimeoutError:
            raise AnalyserBusy from None
        # The worker goes back to the pool (or is replaced) even if the caller leaves.
        return await asyncio.shield(asyncio.get_running_loop().create_task(self._run(worker, sql)))

    async def _run(self, worker: _Worker, sql: str) -> StatementFacts:
        cpu_before = worker.cpu_seconds()
        try:
            facts = await worker.analyse(sql, self.timeout)
        except TimeoutError:
            cpu_after = worker.cpu_seconds()
            self._replace(worker)
            if cpu_before is not None and cpu_after is not None and cpu_after - cpu_before < self.timeout / 2:
                raise AnalyserBusy from None  # the worker was starved, not the text expensive
            self._remember_slow(sql)
            self.on_timeout()
            return self._too_slow()
        except (EOFError, OSError):
            self._replace(worker)
            return StatementFacts(
                denial=Denial("internal", "the statement could not be analysed (the analyser failed)")
            )
        self._put_idle(worker)
        return facts

    def _too_slow(self) -> StatementFacts:
        return StatementFacts(
            denial=Denial(
                TOO_SLOW,
                f"the statement took too long to analyse (over {self.timeout * 1000:g} ms); "
                "simplify it, or raise policy.analysis_timeout",
            )
        )

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker over budget and start another, without blocking the event loop."""
        worker.kill()
        self._workers.discard(worker)

        async def replace() -> None:
            await worker.reap()
            self._put_idle(await asyncio.to_thread(self._spawn))

        task = asyncio.get_running_loop().create_task(replace())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _recently_slow(self, sql: str) -> bool:
        until = self._slow.get(sql)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._slow[sql]
        return False

    def _remember_slow(self, sql: str) -> None:
        if len(self._slow) >= SLOW_TEXT_MEMORY_SIZE:
            with contextlib.suppress(StopIteration):
                del self._slow[next(iter(self._slow))]
        self._slow[sql] = time.monotonic() + SLOW_TEXT_MEMORY_SECONDS
