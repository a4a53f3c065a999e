"""Per-identity admission: a token bucket for the request rate, a cap on statements in flight,
and a share of the connection pool. The rate and the cap answer at once (429 with
`Retry-After`); a request over its identity's share waits for one of the identity's own
connections, at most `acquire_timeout`, so that no identity's requests or slow streams can
take every connection from the others.

With `[limits] redis_url`, the rate and the cap (and the policy's rate of new texts) are
counted in Redis across every replica (`gateway.shared_limits`), and in the process whenever
Redis cannot answer. Without it they are counted per process. The pool share is always per
process: it divides this process's own connections.
"""

from __future__ import annotations

import asyncio
import time

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, rate_limited
from gateway.identity import Identity
from gateway.shared_limits import AT_CONCURRENCY, OVER_RATE, SharedLimits, bucket_capacity


class TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = bucket_capacity(rate)
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


class RateBuckets:
    """Token buckets by identity name, of one kind of event (`kind` names them in Redis): in
    Redis while it answers (when configured), else this process's."""

    def __init__(self, kind: str, shared: SharedLimits | None = None) -> None:
        self.kind = kind
        self.shared = shared
        self._local: dict[str, TokenBucket] = {}

    def take_local(self, name: str, rate: float) -> float:
        """0 when a token was taken, else the seconds until one comes."""
        bucket = self._local.get(name)
        if bucket is None:
            bucket = self._local[name] = TokenBucket(rate)
        return bucket.take()

    async def take(self, name: str, rate: float) -> float:
        """`take_local`, counted across replicas when Redis answers."""
        if self.shared is not None and self.shared.up:
            wait = await self.shared.take_token(f"{self.kind}:{name}", rate)
            if wait is not None:
                return wait
        return self.take_local(name, rate)


class IdentityUsage:
    """What one identity uses in this process: its rate's bucket, its statements in flight, and
    its share of the pool's connections."""

    def __init__(self, share: int, wait: float) -> None:
        self.bucket: TokenBucket | None = None
        self.in_flight = 0
        self.share = share
        self.connections = asyncio.Semaphore(share)
        self.wait = wait  # for one of its connections, at most


def over_rate(identity: Identity, wait: float) -> GatewayError:
    return rate_limited(f'identity "{identity.name}" is over its rate of {identity.rate:g}/s', wait)


def at_concurrency(identity: Identity, in_flight: int) -> GatewayError:
    return rate_limited(
        f'identity "{identity.name}" already has {in_flight} statements in flight '
        f"(its concurrency is {identity.concurrency})",
        1,
    )


class Admission:
    """One request admitted for as long as the `async with` block runs: a statement in flight,
    holding one of its identity's connections. Entering raises `rate_limited` when the identity
    is over its rate or concurrency, or when none of its connections comes free in time."""

    __slots__ = ("_identity", "_lease", "_limits", "_usage")

    def __init__(self, limits: IdentityLimits, identity: Identity, usage: IdentityUsage) -> None:
        self._limits = limits
        self._identity = identity
        self._usage = usage
        self._lease: str | None = None

    async def __aenter__(self) -> None:
        shared = self._limits.shared
        if shared is None or not shared.up or not await self._admit_shared(shared):
            self._admit_locally()
        self._usage.in_flight += 1
        try:
            await self._take_connection()
        except BaseException:
            self._usage.in_flight -= 1
            self._release_lease()
            raise

    async def _admit_shared(self, shared: SharedLimits) -> bool:
        """Admitted across replicas (a refusal raises), or False when Redis did not answer."""
        identity = self._identity
        lease = shared.lease_id()
        answer = await shared.admit(identity.name, identity.rate, identity.concurrency, lease)
        if answer is None:
            return False
        outcome, value = answer
        if outcome == OVER_RATE:
            raise over_rate(identity, value)
        if outcome == AT_CONCURRENCY:
            raise at_concurrency(identity, int(value))
        self._lease = lease
        return True

    def _admit_locally(self) -> None:
        identity, usage = self._identity, self._usage
        if identity.rate is not None:
            if usage.bucket is None:
                usage.bucket = TokenBucket(identity.rate)
            wait = usage.bucket.take()
            if wait > 0:
                raise over_rate(identity, wait)
        if usage.in_flight >= identity.concurrency:
            raise at_concurrency(identity, usage.in_flight)

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

    def _release_lease(self) -> None:
        if self._lease is not None and self._limits.shared is not None:
            self._limits.shared.release(self._lease)

    async def __aexit__(self, *exc_info: object) -> None:
        self._usage.connections.release()
        self._usage.in_flight -= 1
        self._release_lease()


class IdentityLimits:
    def __init__(self, config: GatewayConfig, shared: SharedLimits | None = None) -> None:
        wait = config.database.acquire_timeout
        self.shared = shared
        # The policy's rate of new statement texts, per identity (`analysis_rate`).
        self.misses = RateBuckets("misses", shared)
        self._usage = {
            identity.name: IdentityUsage(config.connection_share(identity), wait) for identity in config.identities
        }

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.start()

    async def stop(self) -> None:
        if self.shared is not None:
            await self.shared.stop()

    def admit(self, identity: Identity) -> Admission:
        return Admission(self, identity, self._usage[identity.name])
