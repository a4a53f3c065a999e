"""A streamed response body that the client must keep taking.

Owns writing a body in pieces, each of which the client must take within
`server.stream_idle_timeout`: a client that stops reading (or reads at a trickle) would
otherwise hold a pooled connection and an open transaction for as long as it likes. What the
body holds, and what a stalled stream does to its transaction, belong to the producer
(`gateway.api.native`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import client_too_slow

# The write buffer of the server's transport pauses the response above 64 KiB (asyncio's and
# uvloop's default high-water mark) and resumes it below 16 KiB: pieces of this size make each
# wait mean "the client took about one piece", whatever the size of a batch of rows.
PIECE_BYTES = 64 * 1024


class PacedBody:
    """Writes a response: its start with the first chunk, then chunks; after a stall, nothing."""

    def __init__(self, send: Send, start: Message, idle_timeout: float) -> None:
        self._send = send
        self._start: Message | None = start
        self.idle_timeout = idle_timeout
        self.stalled = False
        self.client_left = False  # set before the producer is cancelled for it

    async def write(self, chunk: bytes) -> None:
        """Raises `client_too_slow` when the client takes nothing for `idle_timeout` seconds."""
        if self.stalled:
            return
        if self._start is not None:
            start, self._start = self._start, None
            await self._send(start)
        view = memoryview(chunk)
        for begin in range(0, len(view), PIECE_BYTES):
            piece = view[begin : begin + PIECE_BYTES]
            try:
                async with asyncio.timeout(self.idle_timeout):
                    await self._send({"type": "http.response.body", "body": piece, "more_body": True})
            except TimeoutError:
                self.stalled = True
                raise client_too_slow(self.idle_timeout) from None

    async def end(self) -> None:
        """The end of the body; after a stall the response is left unfinished, and the server
        closes the connection."""
        if not self.stalled:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


Producer = Callable[[PacedBody], Awaitable[None]]


class PacedStreamingResponse(StreamingResponse):
    """A streaming response written by `produce` through a `PacedBody` (a `StreamingResponse`
    for the endpoints, which leave closing the request to the stream).

    `produce` runs in the request's own task and the client leaving cancels it there: in a task
    of its own, as Starlette runs a body, a client gone before that task's first step would
    cancel it unstarted, and the producer would never give its connection back."""

    def __init__(self, produce: Producer, *, idle_timeout: float, media_type: str, headers: Mapping[str, str]) -> None:
        self.produce = produce
        self.idle_timeout = idle_timeout
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        body = PacedBody(send, start, self.idle_timeout)
        async with anyio.create_task_group() as group:

            async def cancel_when_the_client_leaves() -> None:
                await self.listen_for_disconnect(receive)
                body.client_left = True
                group.cancel_scope.cancel()

            group.start_soon(cancel_when_the_client_leaves)
            await self.produce(body)
            group.cancel_scope.cancel()
        await body.end()
