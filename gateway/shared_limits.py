"""Per-identity rates and concurrency counted in Redis, shared by every replica of a gateway
(`[limits] redis_url`): token buckets and concurrency leases kept by atomic Lua scripts, with
Redis's own clock, so that replicas on different machines agree.

Owns the Redis connection, its scripts and its state (`up` or not). It does not decide what a
request may do when Redis cannot answer: every call returns None then, and `gateway.limits`
counts in the process instead. The outage is logged once, shown by a gauge and `/readyz`, and
Redis is tried again every `redis_retry` until it answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.config import GatewayConfig, LimitsConfig
from gateway.secrets import MissingSecret, SecretStore

logger = logging.getLogger("gateway.limits")

T = TypeVar("T")

# A token bucket (KEYS[1], when ARGV[1] > 0) and a set of concurrency leases (KEYS[2], when
# ARGV[4] is not empty), checked and taken together, or neither: {0} admitted, {1, ms} over
# the rate (a token comes in ms), {2, n} at the concurrency (n leases held). Expired leases
# (their replica died, or lost Redis for longer than the ttl) are dropped first.
ADMIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens
if rate > 0 then
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'ms')
  tokens = tonumber(state[1]) or capacity
  local updated = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate / 1000)
  if tokens < 1 then
    return {1, math.ceil((1 - tokens) * 1000 / rate)}
  end
end
local lease, ttl = ARGV[4], tonumber(ARGV[5])
if lease ~= '' then
  for i = 6, #ARGV do
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local held = redis.call('ZCARD', KEYS[2])
  if held >= tonumber(ARGV[3]) then
    return {2, held}
  end
  redis.call('ZADD', KEYS[2], now + ttl, lease)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if rate > 0 then
  redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'ms', now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
end
return {0}
"""

# Every lease this replica holds (KEYS[i], ARGV[i + 1]) lasts ARGV[1] ms more; one that expired
# meanwhile stays gone (XX).
RENEW_SCRIPT = """
local t = redis.call('TIME')
local expires = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', expires, ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return #KEYS
"""

ADMITTED, OVER_RATE, AT_CONCURRENCY = 0, 1, 2
ALONE = "counting rates and concurrency in this replica alone until it does"
# What a failed call to Redis raises: its own errors, the network's, the deadline, and a
# password secret that cannot be read as a connection opens.
REDIS_FAILURES = (RedisError, OSError, TimeoutError, MissingSecret)


def _why(error: BaseException) -> str:
    """What failed, for the log line (a deadline's TimeoutError has no message of its own)."""
    return "no answer within redis_timeout" if isinstance(error, TimeoutError) else str(error) or type(error).__name__


def bucket_capacity(rate: float) -> float:
    """A bucket's burst: one second's worth of tokens, and at least one."""
    return max(1.0, rate)


class SecretPassword(CredentialProvider):
    """Redis's password from a secret, read as each connection opens: a rotated secret file
    takes effect without a restart, as the database's password does."""

    def __init__(self, secrets: SecretStore, name: str, username: str | None) -> None:
        self.secrets = secrets
        self.name = name
        self.username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = self.secrets.get(self.name)
        return (password,) if self.username is None else (self.username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


def _client(url: str, secrets: SecretStore, limits: LimitsConfig, name: str) -> Redis:
    """redis-py's asyncio client over at most `redis_connections` connections (`SharedLimits`
    lets no more calls run at once), without retries of its own: a failed call falls back at
    once, and the probe tries again. With a password, the URL's user goes to the credentials."""
    provider = None
    if limits.redis_password_secret is not None:
        parts = urlsplit(url)
        provider = SecretPassword(secrets, limits.redis_password_secret, parts.username)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    pool = ConnectionPool.from_url(
        url,
        max_connections=limits.redis_connections,
        credential_provider=provider,
        socket_timeout=limits.redis_timeout,
        socket_connect_timeout=limits.redis_timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
    )
    return Redis.from_pool(pool)


class SharedLimits:
    """The Redis side of `gateway.limits`. `admit` and `take_token` return None when Redis
    cannot answer now; the caller then counts in the process."""

    def __init__(
        self,
        config: GatewayConfig,
        secrets: SecretStore,
        *,
        on_state: Callable[[bool], None] = lambda up: None,
    ) -> None:
        limits = config.limits
        assert limits.redis_url is not None
        self.client = _client(limits.redis_url, secrets, limits, f"gateway:{config.server.replica}")
        # Keys carry the gateway's name: replicas of one gateway share them, other gateways
        # on the same Redis do not.
        self.prefix = f"gateway:{config.name}:"
        self.timeout = limits.redis_timeout
        self.retry = limits.redis_retry
        self.lease_ms = round(limits.lease_ttl * 1000)
        self.up = False
        self._on_state = on_state
        self._admit = self.client.register_script(ADMIT_SCRIPT)
        self._renew = self.client.register_script(RENEW_SCRIPT)
        self._leases: dict[str, str] = {}  # lease id -> its key, for renewal
        self._releasing: dict[str, list[str]] = {}  # key -> lease ids to give back in the next call
        self._sending: dict[str, list[str]] = {}  # key -> lease ids in the release call under way
        self._release_scheduled = False
        self._tasks: set[asyncio.Task] = set()  # releases under way, the probe, the renewer
        # Calls wait here for a connection, within their deadline. (Not redis-py's blocking
        # pool: on Python 3.11 a waiter cancelled by its deadline can swallow the wake-up meant
        # for the next one, which then times out with connections free.)
        self._connections = asyncio.Semaphore(limits.redis_connections)

    async def start(self) -> None:
        """Counting in Redis if it answers now, else in the process until it does."""
        try:
            await self._attempt(self.client.ping)
        except REDIS_FAILURES as error:
            logger.warning("redis at the limits' redis_url did not answer at start (%s): %s", _why(error), ALONE)
            self._mark(up=False)
        else:
            self._mark(up=True)
        self._spawn(self._renew_leases())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout)
        await self.client.aclose()

    def lease_id(self) -> str:
        return os.urandom(12).hex()

    async def admit(self, identity: str, rate: float | None, concurrency: int, lease: str) -> tuple[int, float] | None:
        """One round trip: (ADMITTED, 0) with the lease held, (OVER_RATE, seconds until a token)
        or (AT_CONCURRENCY, leases held); None when Redis did not answer."""
        keys = [self.prefix + "rate:" + identity, self.prefix + "leases:" + identity]
        # Leases this replica gave back whose release may not have reached Redis yet go first,
        # in this same call: a caller's next request never finds its own last one still counted.
        given_back = [*self._releasing.get(keys[1], ()), *self._sending.get(keys[1], ())]
        args = [rate or 0, bucket_capacity(rate or 1), concurrency, lease, self.lease_ms, *given_back]
        answer = await self._call(partial(self._admit, keys=keys, args=args))
        if answer is None:
            return None
        if answer[0] == ADMITTED:
            self._leases[lease] = keys[1]
            return ADMITTED, 0.0
        return (OVER_RATE, answer[1] / 1000) if answer[0] == OVER_RATE else (AT_CONCURRENCY, float(answer[1]))

    async def take_token(self, bucket: str, rate: float) -> float | None:
        """0 when a token was taken from the shared bucket, else the seconds until one comes;
        None when Redis did not answer."""
        keys = [self.prefix + bucket] * 2  # no lease: the second key is not used
        answer = await self._call(partial(self._admit, keys=keys, args=[rate, bucket_capacity(rate), 0, "", 0]))
        if answer is None:
            return None
        return 0.0 if answer[0] == ADMITTED else answer[1] / 1000

    def release(self, lease: str) -> None:
        """Give a lease back, in the background: the request's answer does not wait for it.
        Leases given back meanwhile go together in the next call (one at a time, so releases
        never crowd out admissions), and with this replica's next admission of the same
        identity, which removes them before it counts. Should Redis not answer, they expire
        within `lease_ttl`."""
        key = self._leases.pop(lease, None)
        if key is None or not self.up:
            return
        self._releasing.setdefault(key, []).append(lease)
        if not self._release_scheduled:
            self._release_scheduled = True
            self._spawn(self._release_pending())

    async def _release_pending(self) -> None:
        try:
            while self._releasing and self.up:
                self._sending, self._releasing = self._releasing, {}
                pipeline = self.client.pipeline(transaction=False)
                for key, leases in self._sending.items():
                    pipeline.zrem(key, *leases)
                await self._call(pipeline.execute)
        finally:
            self._sending = {}
            self._release_scheduled = False

    async def _renew_leases(self) -> None:
        """Leases of long requests last as long as their requests: renewed together, in one
        call, every third of their ttl."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            leases = dict(self._leases)
            if leases and self.up:
                await self._call(partial(self._renew, keys=list(leases.values()), args=[self.lease_ms, *leases]))

    async def _attempt(self, call: Callable[[], Awaitable[T]]) -> T:
        """The call's answer, a connection and the answer both within the deadline."""
        async with asyncio.timeout(self.timeout), self._connections:
            return await call()

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """`_attempt`, or None, and the outage noted, when Redis does not answer."""
        try:
            return await self._attempt(call)
        except REDIS_FAILURES as error:
            self._lost(error)
            return None

    def _lost(self, error: BaseException) -> None:
        if not self.up:
            return
        logger.warning("redis at the limits' redis_url did not answer (%s): %s", _why(error), ALONE)
        self._mark(up=False)

    def _mark(self, *, up: bool) -> None:
        self.up = up
        self._on_state(up)
        if not up:
            self._spawn(self._probe())

    async def _probe(self) -> None:
        """While Redis is unreachable, one ping every `redis_retry`; the first answer ends the outage."""
        # Connections from before the outage may have been closed by a restarted server: each
        # would fail once more, and count as another outage.
        await self.client.connection_pool.disconnect()
        while True:
            await asyncio.sleep(self.retry)
            try:
                await self._attempt(self.client.ping)
            except REDIS_FAILURES:
                continue
            logger.warning("redis answers again: rates and concurrency are counted across replicas again")
            self._mark(up=True)
            return

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
