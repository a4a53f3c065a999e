"""`GatewayClient`: the native API over a blocking httpx client (Cloud Functions, Prefect
tasks, scripts). Calls, decoding and retry decisions are shared with the async client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, Unpack

import httpx

from gateway_client import _calls as calls
from gateway_client import _wire
from gateway_client._base import DEFAULT_MAX_RETRY_WAIT, DEFAULT_RETRIES, DEFAULT_TIMEOUT, ClientBase
from gateway_client._calls import BatchOptions, BatchStatement, Call, ExplainOptions, StatementOptions
from gateway_client._errors import error_from_response
from gateway_client._results import END, DatabaseCredential, Explanation, QueryResult, StreamedResult

T = TypeVar("T")


class RowStream(StreamedResult):
    """Iterate for the rows; `command`, `row_count` and `truncated` are set once they end.
    A failure after the first rows is raised as its typed error when the iteration reaches it."""

    def __iter__(self) -> Iterator[Any]:
        for line in self._lines:
            row = self.take(line)
            if row is END:
                return
            yield row
        raise self.cut_short()


class GatewayClient(ClientBase):
    """Calls one gateway with the tokens `token_provider` returns (see `gateway_client`)."""

    token_provider: Callable[[], str]
    _http: httpx.Client

    def __init__(
        self,
        url: str,
        token_provider: Callable[[], str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
    ) -> None:
        super().__init__(url, token_provider, timeout=timeout, retries=retries, max_retry_wait=max_retry_wait)
        self._http = httpx.Client(**self._http_options())

    def query(self, sql: str, *args: Any, **options: Unpack[StatementOptions]) -> QueryResult:
        """One statement; `$1…$n` take `args` in order (or `params=[...]`)."""
        return self._call(calls.query(sql, args, **options))

    def batch(self, statements: Sequence[BatchStatement], **options: Unpack[BatchOptions]) -> list[QueryResult]:
        """Statements (`sql` or `(sql, params)`) in one transaction, all or nothing."""
        return self._call(calls.batch(statements, **options))

    @contextmanager
    def stream(self, sql: str, *args: Any, **options: Unpack[StatementOptions]) -> Iterator[RowStream]:
        """`with client.stream(sql) as rows: for row in rows: ...`, rows read as they arrive."""
        call, row_mode = calls.stream(sql, args, **options)
        response = self._send(call)
        try:
            lines = response.iter_lines()
            yield RowStream(next(lines, ""), lines, row_mode)
        finally:
            response.close()

    def explain(self, sql: str, *args: Any, **options: Unpack[ExplainOptions]) -> Explanation:
        """The policy decision on a statement, without running it."""
        return self._call(calls.explain(sql, args, **options))

    def whoami(self) -> dict[str, Any]:
        """The identity, role, issuer and limits the token resolves to."""
        return self._call(calls.WHOAMI)

    def credentials(self, ttl: str | float | None = None) -> DatabaseCredential:
        """A temporary PostgreSQL login of this identity (`ttl`: "15m", seconds, or None for
        the identity's default); its `url` and `expires_at`. See the README's broker section."""
        return self._call(calls.credentials(ttl))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, call: Call[T]) -> T:
        return call.decode(_wire.loads(self._send(call).read()))

    def _send(self, call: Call[Any]) -> httpx.Response:
        """The first successful answer, unread so it can stream; errors are raised as typed
        errors once the retries they allow are spent."""
        retries = self.retry_policy.start(call.idempotent)
        while True:
            response = self._http.send(self._request(call, self.token_provider()), stream=True)
            if response.is_success:
                return response
            response.read()
            time.sleep(retries.pause(error_from_response(response)))
