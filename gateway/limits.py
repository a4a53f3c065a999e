"""Per-identity admission: a token bucket for the request rate and a cap on statements in
flight. Both answer at once (429 with `Retry-After`); nothing queues here.

Limits are per process: with several workers each enforces its own share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

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
    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    @contextmanager
    def admit(self, identity: Identity) -> Iterator[None]:
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
            yield
        finally:
            self._in_flight[identity.name] -= 1
