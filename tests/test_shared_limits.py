"""Limits shared in Redis (`[limits] redis_url`), against a real redis-server: one token bucket
and one set of concurrency leases per identity for every replica, leases of a dead replica
expiring while a live one's are renewed, the password from a secret; and, with Redis stopped,
no answer (the caller then counts alone) and one state change per outage until Redis answers
again. Gateways losing Redis under load: tests/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from conftest import RedisServer
from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.errors import GatewayError
from gateway.identity import Identity
from gateway.limits import IdentityLimits, RateBuckets
from gateway.metrics import GatewayMetrics
from gateway.secrets import SecretStore
from gateway.shared_limits import ADMITTED, AT_CONCURRENCY, OVER_RATE, SharedLimits


def limits_config(redis: RedisServer | None = None, **limits: Any) -> dict[str, Any]:
    section = {"redis_url": redis.url, **limits} if redis is not None else limits
    return {"name": "shared", "database": {"url": "postgresql://gw@db.example/app"}, "limits": section}


def replica(redis: RedisServer, *, states: list[bool] | None = None, **limits: Any) -> SharedLimits:
    """One replica's view of the shared limits, as `gateway serve` builds it."""
    config = parse_config(limits_config(redis, **limits))
    on_state = states.append if states is not None else lambda up: None
    return SharedLimits(config, SecretStore(), on_state=on_state)


async def started(*replicas: SharedLimits) -> None:
    for shared in replicas:
        await shared.start()


async def stopped(*replicas: SharedLimits) -> None:
    for shared in replicas:
        await shared.stop()


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(("limits", "expected"), [
    ({"redis_url": "redis://:hunter2@127.0.0.1:6379/0"}, "must not contain a password; name it with"),
    ({"redis_url": "redis://127.0.0.1:6379/0?password=hunter2"}, "must not contain a password"),
    ({"redis_url": "http://127.0.0.1:6379"}, "expected a redis://, rediss:// or unix:// URL"),
    ({"redis_password_secret": "REDIS_PASSWORD"}, "limits.redis_password_secret: only with limits.redis_url"),
    ({"redis_url": "redis://127.0.0.1", "redis_timeout": 0}, "limits.redis_timeout: expected a duration above"),
    ({"redis_url": "redis://127.0.0.1", "lease_ttl": "0s"}, "limits.lease_ttl: expected a duration above zero"),
    ({"redis_url": "redis://127.0.0.1", "redis_connections": 0}, "limits.redis_connections: expected at least 1"),
    ({"redis_url": "redis://127.0.0.1", "redis_password_secret": "/etc/x"}, "expected the name of a secret"),
])
def test_limits_settings_are_checked(limits, expected):
    with pytest.raises(ConfigError, match="limits") as raised:
        parse_config(limits_config(**limits))
    assert expected in str(raised.value)


def test_the_replica_is_named_after_the_host_unless_configured():
    assert parse_config(limits_config()).server.replica == socket.gethostname()
    named = parse_config({**limits_config(), "server": {"replica": "edge-1.eu"}})
    assert named.server.replica == "edge-1.eu"
    with pytest.raises(ConfigError, match=r"server\.replica"):
        parse_config({**limits_config(), "server": {"replica": "a b"}})


def test_the_shared_limits_metrics_exist_only_with_redis():
    assert b"gateway_shared_limits_up" not in GatewayMetrics().render()[0]
    with_redis = GatewayMetrics(shared_limits=True)
    with_redis.shared_limits_state(False)
    body = with_redis.render()[0].decode()
    assert "gateway_shared_limits_up 0.0" in body and "gateway_shared_limits_outages_total 1.0" in body


# ---------------------------------------------------------------------------- counted across replicas


def test_replicas_take_from_one_token_bucket(start_redis):
    redis = start_redis()

    async def scenario() -> list[tuple[int, float] | None]:
        a, b = replica(redis), replica(redis)
        await started(a, b)
        try:
            # rate 4/s: a burst of 4, whichever replica takes them
            return [await shared.admit("paced", 4, 100, shared.lease_id()) for shared in (a, b, a, b, a)]
        finally:
            await stopped(a, b)

    answers = asyncio.run(scenario())
    assert [answer[0] for answer in answers if answer] == [ADMITTED] * 4 + [OVER_RATE]
    assert 0 < answers[-1][1] <= 0.26  # the next token, at 4/s


def test_replicas_share_the_concurrency_cap_and_a_released_lease_frees_a_place(start_redis):
    redis = start_redis()

    async def scenario() -> None:
        a, b = replica(redis), replica(redis)
        await started(a, b)
        try:
            first, second = a.lease_id(), b.lease_id()
            assert await a.admit("capped", None, 2, first) == (ADMITTED, 0.0)
            assert await b.admit("capped", None, 2, second) == (ADMITTED, 0.0)
            assert await a.admit("capped", None, 2, a.lease_id()) == (AT_CONCURRENCY, 2.0)
            b.release(second)
            await wait_until(lambda: b.admit("capped", None, 2, b.lease_id()), (ADMITTED, 0.0))
        finally:
            await stopped(a, b)

    asyncio.run(scenario())


def test_a_lease_given_back_is_free_for_the_next_admission_at_once(start_redis):
    """A caller at its cap sends its next request as soon as the answer arrives: the lease of
    the last one is given back in the background, yet never still counted against the next."""
    redis = start_redis()

    async def scenario() -> None:
        shared = replica(redis)
        await started(shared)
        try:
            for _ in range(50):
                lease = shared.lease_id()
                assert await shared.admit("one-at-a-time", None, 1, lease) == (ADMITTED, 0.0)
                shared.release(lease)
        finally:
            await stopped(shared)

    asyncio.run(scenario())


async def wait_until(call: Callable[[], Any], expected: Any, deadline: float = 5.0) -> None:
    give_up = time.monotonic() + deadline
    while (answer := await call()) != expected:
        assert time.monotonic() < give_up, f"still {answer!r}, not {expected!r}"
        await asyncio.sleep(0.02)


def test_a_burst_waits_for_the_few_connections_instead_of_failing(start_redis):
    redis = start_redis()
    states: list[bool] = []

    async def scenario() -> list[tuple[int, float] | None]:
        shared = replica(redis, states=states, redis_connections=2, redis_timeout="5s")
        await shared.start()
        try:
            return await asyncio.gather(*(shared.admit("burst", None, 100, shared.lease_id()) for _ in range(60)))
        finally:
            await shared.stop()

    answers = asyncio.run(scenario())
    assert answers == [(ADMITTED, 0.0)] * 60
    assert states == [True]  # never taken for an outage


def test_a_dead_replicas_leases_expire_and_a_live_ones_are_renewed(start_redis):
    redis = start_redis()

    async def scenario() -> None:
        live, dead, other = (replica(redis, lease_ttl="300ms") for _ in range(3))
        await started(live, other)  # `dead` never starts its renewal: as if its process were gone
        try:
            assert (await live.admit("held", None, 2, live.lease_id()))[0] == ADMITTED
            assert (await dead.admit("held", None, 2, dead.lease_id()))[0] == ADMITTED
            assert (await other.admit("held", None, 2, other.lease_id()))[0] == AT_CONCURRENCY
            await asyncio.sleep(0.9)  # three ttls: the live lease was renewed, the dead one expired
            assert await other.admit("held", None, 2, "third") == (ADMITTED, 0.0)
            assert await other.admit("held", None, 2, other.lease_id()) == (AT_CONCURRENCY, 2.0)
        finally:
            await stopped(live, other)
            await dead.client.aclose()

    asyncio.run(scenario())


def admission_config(redis: RedisServer) -> GatewayConfig:
    """One identity of concurrency 3 holding at most one of this process's connections, whose
    next request waits for it 100 ms."""
    return parse_config({
        **limits_config(redis),
        "database": {"url": "postgresql://gw@db.example/app", "acquire_timeout": "100ms"},
        "issuers": [{"name": "dev", "issuer": "dev", "audience": "gw", "hs256_secret": "KEY"}],
        "identities": [{"name": "shared", "issuer": "dev", "role": "app", "concurrency": 3, "max_connections": 1}],
    })


def test_a_request_refused_its_connection_gives_its_lease_back(start_redis):
    redis = start_redis()
    config = admission_config(redis)
    identity = Identity.from_config(config.identities[0])

    async def scenario() -> tuple[str, int, int]:
        shared = SharedLimits(config, SecretStore())
        limits = IdentityLimits(config, shared)
        await limits.start()
        try:
            async with limits.admit(identity):
                with pytest.raises(GatewayError) as refused:
                    async with limits.admit(identity):
                        pass
                leases = shared.prefix + "leases:shared"
                held = await wait_for_count(shared, leases, 1)
            return refused.value.message, held, await wait_for_count(shared, leases, 0)
        finally:
            await limits.stop()

    message, held_while_refused, held_after = asyncio.run(scenario())
    assert "holds all 1 database connections" in message
    assert (held_while_refused, held_after) == (1, 0)


async def wait_for_count(shared: SharedLimits, key: str, expected: int) -> int:
    """The leases under `key` once they are `expected` (released in the background), or as they are after 5s."""
    give_up = time.monotonic() + 5
    while (count := await shared.client.zcard(key)) != expected and time.monotonic() < give_up:
        await asyncio.sleep(0.02)
    return count


def test_new_statement_texts_are_counted_across_replicas(start_redis):
    redis = start_redis()

    async def scenario() -> list[float]:
        a, b = replica(redis), replica(redis)
        await started(a, b)
        try:
            buckets = [RateBuckets("misses", a), RateBuckets("misses", b)]
            return [await buckets[n % 2].take("reader", 2) for n in range(3)]
        finally:
            await stopped(a, b)

    first, second, third = asyncio.run(scenario())
    assert first == second == 0 and third > 0


def test_the_redis_password_comes_from_a_secret_read_as_each_connection_opens(start_redis, tmp_path):
    redis = start_redis(password="first-redis-password")
    (tmp_path / "REDIS_PASSWORD").write_text("first-redis-password\n")

    async def scenario() -> None:
        config = parse_config(limits_config(redis, redis_password_secret="REDIS_PASSWORD"))
        shared = SharedLimits(config, SecretStore(tmp_path))
        await shared.start()
        try:
            assert shared.up and await shared.admit("paced", 1, 1, shared.lease_id()) == (ADMITTED, 0.0)
            await shared.client.config_set("requirepass", "second-redis-password")
            (tmp_path / "REDIS_PASSWORD").write_text("second-redis-password\n")
            await shared.client.connection_pool.disconnect()  # the next call opens a new connection
            assert await shared.take_token("misses:paced", 1) == 0
        finally:
            await shared.stop()

    asyncio.run(scenario())


def test_a_user_named_in_the_url_logs_in_with_the_secrets_password(start_redis, tmp_path):
    redis = start_redis(password="default-user-password")
    (tmp_path / "REDIS_PASSWORD").write_text("limits-user-password")

    async def scenario() -> bool:
        admin = Redis.from_url(redis.url, password="default-user-password")
        await admin.acl_setuser("limits", enabled=True, passwords=["+limits-user-password"], keys=["*"],
                                commands=["+@all"])
        await admin.aclose()
        url = redis.url.replace("redis://", "redis://limits@")
        config = parse_config(limits_config(redis_url=url, redis_password_secret="REDIS_PASSWORD"))
        shared = SharedLimits(config, SecretStore(tmp_path))
        await shared.start()
        try:
            return shared.up and await shared.client.acl_whoami() == "limits"
        finally:
            await shared.stop()

    assert asyncio.run(scenario())


def test_without_redis_every_call_answers_none_until_it_is_back(start_redis, caplog):
    redis = start_redis()
    states: list[bool] = []

    async def scenario() -> None:
        shared = replica(redis, states=states, redis_retry="100ms")
        await shared.start()
        try:
            redis.stop()
            for _ in range(5):
                assert await shared.admit("paced", 10, 10, shared.lease_id()) is None
            assert await shared.take_token("misses:paced", 10) is None
            assert states == [True, False]  # one outage, not one per call
            misses = RateBuckets("misses", shared)  # counted in the process meanwhile
            assert [await misses.take("paced", 1) > 0 for _ in range(2)] == [False, True]
            redis.start()
            await wait_until(lambda: asyncio.sleep(0, shared.up), True)  # the probe found it
            assert states == [True, False, True]
            assert await shared.admit("paced", 10, 10, shared.lease_id()) == (ADMITTED, 0.0)
        finally:
            await shared.stop()

    asyncio.run(scenario())
    warnings = [record.getMessage() for record in caplog.records if record.name == "gateway.limits"]
    assert len(warnings) == 2 and "did not answer" in warnings[0] and "answers again" in warnings[1]
