"""Per-identity admission: a token bucket for the request rate, a cap on statements in flight,
and a share of the connection pool. The rate and the cap answer at once (429 with
`Retry-After`); a request over its identity's share waits for one of the identity's own
connections, at most `acquire_timeout`, so that no identity's requests or slow streams can
take every connection from the others.

Limits are per process: with several workers each enforces its own share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.config import GatewayConfig
from gateway.errors import rate_limited
from gateway.identity import Identity


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 when admitted, else the seconds until a token is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class IdentityLimits:
    def __init__(self, config: GatewayConfig) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}
        self._shares = {identity.name: config.connection_share(identity) for identity in config.identities}
        self._connections = {name: asyncio.Semaphore(share) for name, share in self._shares.items()}
        self._share_wait = config.database.acquire_timeout

    @asynccontextmanager
    async def admit(self, identity: Identity) -> AsyncIterator[None]:
        """Admitted for as long as the block runs, holding one of the identity's connections."""
        if identity.rate is not None:
            bucket = self._buckets.get(identity.name)
            if bucket is None:
                bucket = self._buckets[identity.name] = TokenBucket(identity.rate)
            wait = bucket.take()
            if wait > 0:
                raise rate_limited(f'identity "{identity.name}" is over its rate of {identity.rate:g}/s', wait)
        in_flight = self._in_flight.get(identity.name, 0)
        if in_flight >= identity.concurrency:
            raise rate_limited(
                f'identity "{identity.name}" already has {in_flight} statements in flight '
                f"(its concurrency is {identity.concurrency})",
                1,
            )
        self._in_flight[identity.name] = in_flight + 1
        try:
            connections = self._connections[identity.name]
            await self._take(identity, connections)
            try:
                yield
            finally:
                connections.release()
        finally:
            self._in_flight[identity.name] -= 1

    async def _take(self, identity: Identity, connections: asyncio.Semaphore) -> None:
        if not connections.locked():
            await connections.acquire()  # free: returns without waiting
            return
        try:
            async with asyncio.timeout(self._share_wait):
                await connections.acquire()
        except TimeoutError:
            share = self._shares[identity.name]
            raise rate_limited(
                f'identity "{identity.name}" holds all {share} database connections it may hold (its '
                f"max_connections) and none came free within {self._share_wait:g}s",
                1,
            ) from None
