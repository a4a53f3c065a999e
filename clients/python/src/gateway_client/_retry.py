"""When a failed call is tried again, and after how long.

Retried answers are 429 and 503. The gateway's `rate_limited` and `overloaded` are refused
before the statement runs, so every call retries them. Any other 429 or 503 (the
gateway's `database_unavailable`, which can come after a statement ran; a proxy's page)
is retried only for idempotent calls: explain, whoami, and calls marked `idempotent=True`.
The wait is the answer's `Retry-After` (else a doubling backoff), within a bounded number of
retries and a bounded total wait: a `Retry-After` past that budget is raised at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_client._errors import GatewayError

RETRIED_STATUSES = frozenset({429, 503})
REFUSED_BEFORE_RUNNING = frozenset({"rate_limited", "overloaded"})
FIRST_BACKOFF = 0.5  # seconds, doubled per retry, when the answer has no Retry-After


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2  # tries after the first
    max_wait: float = 10.0  # seconds of waiting, summed over one call's retries

    def start(self, idempotent: bool) -> Retries:
        return Retries(self, idempotent)


class Retries:
    """One call's remaining retries and waiting time."""

    def __init__(self, policy: RetryPolicy, idempotent: bool) -> None:
        self.idempotent = idempotent
        self.left = policy.retries
        self.wait_left = policy.max_wait
        self.backoff = FIRST_BACKOFF

    def pause(self, error: GatewayError) -> float:
        """Seconds to wait before trying again; raises `error` when the call may not retry."""
        delay = self._delay(error)
        if delay is None:
            raise error
        self.left -= 1
        self.wait_left -= delay
        self.backoff *= 2
        return delay

    def _delay(self, error: GatewayError) -> float | None:
        if self.left <= 0 or not self._may_retry(error):
            return None
        delay = error.retry_after if error.retry_after is not None else self.backoff
        return delay if delay <= self.wait_left else None

    def _may_retry(self, error: GatewayError) -> bool:
        if error.status not in RETRIED_STATUSES:
            return False
        return self.idempotent or error.code in REFUSED_BEFORE_RUNNING
