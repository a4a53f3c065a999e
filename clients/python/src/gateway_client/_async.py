"""`AsyncGatewayClient`: the native API over an async httpx client. Calls, decoding and retry
decisions are shared with the sync client; only sending, sleeping and reading differ.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, Unpack

import httpx

from gateway_client import _calls as calls
from gateway_client import _wire
from gateway_client._base import DEFAULT_MAX_RETRY_WAIT, DEFAULT_RETRIES, DEFAULT_TIMEOUT, ClientBase
from gateway_client._calls import BatchOptions, BatchStatement, Call, ExplainOptions, StatementOptions
from gateway_client._errors import error_from_response
from gateway_client._results import END, DatabaseCredential, Explanation, QueryResult, StreamedResult
from gateway_client._tokens import FetchedToken, TokenProvider

T = TypeVar("T")


class AsyncRowStream(StreamedResult):
    """`async for` the rows; otherwise as `RowStream`."""

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for line in self._lines:
            row = self.take(line)
            if row is END:
                return
            yield row
        raise self.cut_short()


class AsyncGatewayClient(ClientBase):
    """`GatewayClient` for asyncio: the same methods, awaited. `token_provider` may be an
    async function; a sync one must not block, except the `FetchedToken` providers, whose
    fetches run in a worker thread."""

    token_provider: TokenProvider
    _http: httpx.AsyncClient

    def __init__(
        self,
        url: str,
        token_provider: TokenProvider,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
    ) -> None:
        super().__init__(url, token_provider, timeout=timeout, retries=retries, max_retry_wait=max_retry_wait)
        self._http = httpx.AsyncClient(**self._http_options())

    async def query(self, sql: str, *args: Any, **options: Unpack[StatementOptions]) -> QueryResult:
        return await self._call(calls.query(sql, args, **options))

    async def batch(self, statements: Sequence[BatchStatement], **options: Unpack[BatchOptions]) -> list[QueryResult]:
        return await self._call(calls.batch(statements, **options))

    @asynccontextmanager
    async def stream(self, sql: str, *args: Any, **options: Unpack[StatementOptions]) -> AsyncIterator[AsyncRowStream]:
        """`async with client.stream(sql) as rows: async for row in rows: ...`"""
        call, row_mode = calls.stream(sql, args, **options)
        response = await self._send(call)
        try:
            lines = response.aiter_lines()
            yield AsyncRowStream(await anext(lines, ""), lines, row_mode)
        finally:
            await response.aclose()

    async def explain(self, sql: str, *args: Any, **options: Unpack[ExplainOptions]) -> Explanation:
        return await self._call(calls.explain(sql, args, **options))

    async def whoami(self) -> dict[str, Any]:
        return await self._call(calls.WHOAMI)

    async def credentials(self, ttl: str | float | None = None) -> DatabaseCredential:
        return await self._call(calls.credentials(ttl))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, call: Call[T]) -> T:
        return call.decode(_wire.loads(await (await self._send(call)).aread()))

    async def _send(self, call: Call[Any]) -> httpx.Response:
        retries = self.retry_policy.start(call.idempotent)
        while True:
            response = await self._http.send(self._request(call, await self._token()), stream=True)
            if response.is_success:
                return response
            await response.aread()
            await asyncio.sleep(retries.pause(error_from_response(response)))

    async def _token(self) -> str:
        provider = self.token_provider
        if isinstance(provider, FetchedToken) and provider.cached() is None:
            return await asyncio.to_thread(provider)  # its fetch is a blocking HTTP request
        token = provider()
        return await token if inspect.isawaitable(token) else token
