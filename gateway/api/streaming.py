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

from starlette.responses import StreamingResponse
from starlette.types import Send

from gateway.errors import client_too_slow

# The write buffer of the server's transport pauses the response above 64 KiB (asyncio's and
# uvloop's default high-water mark) and resumes it below 16 KiB: pieces of this size make each
# wait mean "the client took about one piece", whatever the size of a batch of rows.
PIECE_BYTES = 64 * 1024


class PacedBody:
    """Writes chunks of a response body; after a stall, nothing more."""

    def __init__(self, send: Send, idle_timeout: float) -> None:
        self._send = send
        self.idle_timeout = idle_timeout
        self.stalled = False

    async def write(self, chunk: bytes) -> None:
        """Raises `client_too_slow` when the client takes nothing for `idle_timeout` seconds."""
        if self.stalled:
            return
        view = memoryview(chunk)
        for start in range(0, len(view), PIECE_BYTES):
            piece = view[start : start + PIECE_BYTES]
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
    """A streaming response written by `produce` through a `PacedBody`. Starlette's
    `StreamingResponse` still watches for the client leaving (which cancels `produce`)."""

    def __init__(self, produce: Producer, *, idle_timeout: float, media_type: str, headers: Mapping[str, str]) -> None:
        self.produce = produce
        self.idle_timeout = idle_timeout
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = PacedBody(send, self.idle_timeout)
        await self.produce(body)
        await body.end()
