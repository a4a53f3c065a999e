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


class IdentityUsage:
    """What one identity uses in this process: its rate's bucket, its statements in flight, and
    its share of the pool's connections."""

    def __init__(self, share: int, wait: float) -> None:
        self.bucket: TokenBucket | None = None
        self.in_flight = 0
        self.share = share
        self.connections = asyncio.Semaphore(share)
        self.wait = wait  # for one of its connections, at most


class Admission:
    """One request admitted for as long as the `async with` block runs: a statement in flight,
    holding one of its identity's connections. Entering raises `rate_limited` when the identity
    is over its rate or concurrency, or when none of its connections comes free in time."""

    __slots__ = ("_identity", "_usage")

    def __init__(self, identity: Identity, usage: IdentityUsage) -> None:
        self._identity = identity
        self._usage = usage

    async def __aenter__(self) -> None:
        identity, usage = self._identity, self._usage
        if identity.rate is not None:
            if usage.bucket is None:
                usage.bucket = TokenBucket(identity.rate)
            wait = usage.bucket.take()
            if wait > 0:
                raise rate_limited(f'identity "{identity.name}" is over its rate of {identity.rate:g}/s', wait)
        if usage.in_flight >= identity.concurrency:
            raise rate_limited(
                f'identity "{identity.name}" already has {usage.in_flight} statements in flight '
                f"(its concurrency is {identity.concurrency})",
                1,
            )
        usage.in_flight += 1
        try:
            await self._take_connection()
        except BaseException:
            usage.in_flight -= 1
            raise

    async def _take_connection(self) -> None:
        connections = self._usage.connections
        if not connections.locked():
            await connections.acquire()  # free: returns without waiting
            return
        try:
            async with asyncio.timeout(self._usage.wait):
                await connections.acquire()
        except TimeoutError:
            raise rate_limited(
                f'identity "{self._identity.name}" holds all {self._usage.share} database connections it may '
                f"hold (its max_connections) and none came free within {self._usage.wait:g}s",
                1,
            ) from None

    async def __aexit__(self, *exc_info: object) -> None:
        self._usage.connections.release()
        self._usage.in_flight -= 1


class IdentityLimits:
    def __init__(self, config: GatewayConfig) -> None:
        wait = config.database.acquire_timeout
        self._usage = {
            identity.name: IdentityUsage(config.connection_share(identity), wait) for identity in config.identities
        }

    def admit(self, identity: Identity) -> Admission:
        return Admission(identity, self._usage[identity.name])
