"""Prometheus metrics: what each request did, observed once when it closes, the pool's state,
read when scraped, and the identity roles' excess privileges found at start; the registry a
scrape reads, for `GET /metrics` on the API's listener or on one of its own (`gateway.server`).

Owns metric names, labels and buckets. With several workers set `PROMETHEUS_MULTIPROC_DIR`
(an empty directory shared by the workers): prometheus-client then keeps each worker's values
in files there and a scrape of any process reports the sum (see README).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from gateway.pipeline import RequestScope

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

PoolState = Callable[[], tuple[int, int, int]]  # (connections in use, idle, requests waiting)


def multiprocess_registry() -> CollectorRegistry:
    """A registry whose scrape sums the files every worker writes in `PROMETHEUS_MULTIPROC_DIR`."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class GatewayMetrics:
    def __init__(self, *, shared_limits: bool = False) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # In multiprocess mode values live in the shared directory, not in a registry.
        registry = None if self.multiprocess else CollectorRegistry()
        # What a scrape reads.
        self.registry = registry or multiprocess_registry()
        self.requests = Counter(
            "gateway_requests",
            "Requests by identity, endpoint and status",
            ["identity", "endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time spent per request, by phase (auth, policy, db, total)",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.policy_denials = Counter(
            "gateway_policy_denials",
            "Statements denied by policy, by identity and reason category",
            ["identity", "reason"],
            registry=registry,
        )
        self.analysis_timeouts = Counter(
            "gateway_analysis_timeouts",
            "New statement texts whose analysis ran past policy.analysis_timeout (their worker was killed)",
            registry=registry,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures", "Tokens refused, by stable reason code", ["reason"], registry=registry
        )
        self.jwks_refreshes = Counter(
            "gateway_jwks_refreshes", "JWKS fetches, by issuer and outcome", ["issuer", "outcome"], registry=registry
        )
        self.rows = Counter("gateway_rows_streamed", "Result rows sent, by identity", ["identity"], registry=registry)
        self.bytes = Counter(
            "gateway_bytes_streamed", "Result bytes sent, by identity", ["identity"], registry=registry
        )
        # From acquire to the end of release (the reset included): how long one request keeps a
        # connection from every other request, the figure that sizes the pool.
        self.connection_hold = Histogram(
            "gateway_connection_hold_seconds",
            "Time a pooled connection is held per use, from acquire to the end of its release",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        pool_mode = {"multiprocess_mode": "livesum"}
        self.pool_in_use = Gauge("gateway_pool_in_use", "Connections lent out", registry=registry, **pool_mode)
        self.pool_idle = Gauge("gateway_pool_idle", "Connections idle in the pool", registry=registry, **pool_mode)
        self.pool_waiting = Gauge(
            "gateway_pool_waiting", "Requests waiting for a connection", registry=registry, **pool_mode
        )
        # Read once at start (`gateway.grants`); every worker reads the same database.
        self.role_excess = Gauge(
            "gateway_role_excess_privileges",
            "Privileges an identity role holds beyond what the rules of its identities allow, read at start",
            ["role"],
            registry=registry,
            multiprocess_mode="livemax",
        )

        # Only with `[limits] redis_url` (`shared_limits`): without Redis, a 0 would read as an outage.
        self.shared_limits_up: Gauge | None = None
        self.shared_limits_outages: Counter | None = None
        if shared_limits:
            self.shared_limits_up = Gauge(
                "gateway_shared_limits_up",
                "1 while limits are counted in Redis across replicas, 0 while counted per process (Redis unreachable)",
                registry=registry,
                multiprocess_mode="livemin",
            )
            self.shared_limits_outages = Counter(
                "gateway_shared_limits_outages",
                "Times Redis stopped answering and limits fell back to per-process counting",
                registry=registry,
            )

    def shared_limits_state(self, up: bool) -> None:
        """Redis answers (again), or stopped answering."""
        assert self.shared_limits_up is not None and self.shared_limits_outages is not None
        self.shared_limits_up.set(1 if up else 0)
        if not up:
            self.shared_limits_outages.inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(...)`, remembered: prometheus-client looks labels up under a lock
        on every call, and this runs several times per request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, scope: RequestScope) -> None:
        """Everything one finished request contributes, in one place."""
        record = scope.record
        identity = record.identity or ""
        self._child(self.requests, identity, record.endpoint, str(record.status)).inc()
        for phase, seconds in scope.timings.items():
            self._child(self.latency, phase).observe(seconds)
        self._child(self.latency, "total").observe(scope.elapsed())
        error = scope.error
        if error is not None and error.code == "unauthenticated":
            self._child(self.auth_failures, error.detail or "invalid_token").inc()
        for judged in scope.judged:
            if not judged.decision.allowed:
                self._child(self.policy_denials, identity, judged.decision.category or "denied").inc()
        if record.rows:
            self._child(self.rows, identity).inc(record.rows)
        if record.bytes:
            self._child(self.bytes, identity).inc(record.bytes)

    @asynccontextmanager
    async def following_pool(self, pool_state: PoolState, sample_interval: float) -> AsyncIterator[None]:
        """The pool gauges follow `pool_state` while the block runs: read at every scrape (a
        request that never ends, on a frozen database, still shows); in multiprocess mode,
        where the process that answers a scrape cannot read another worker's pool, written
        every `sample_interval` instead."""
        gauges = (self.pool_in_use, self.pool_idle, self.pool_waiting)
        if not self.multiprocess:
            for index, gauge in enumerate(gauges):
                gauge.set_function(lambda index=index: pool_state()[index])
            yield
            return

        async def publish() -> None:
            while True:
                for gauge, value in zip(gauges, pool_state(), strict=True):
                    gauge.set(value)
                await asyncio.sleep(sample_interval)

        publisher = asyncio.create_task(publish())
        try:
            yield
        finally:
            publisher.cancel()
            with suppress(asyncio.CancelledError):
                await publisher

    def observe_role_excess(self, role: str, count: int) -> None:
        self.role_excess.labels(role).set(count)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
