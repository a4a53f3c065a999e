"""Slow readers cannot pin the pool (issue 10, item 3): a streamed result the client stops
taking is aborted after `server.stream_idle_timeout`, its transaction rolled back and the
audit record saying the client was too slow; and an identity holds at most its share of the
pool (`max_connections`), so one flooding slow streams leaves connections for the others.
Real `gateway serve` processes, real clients that stop reading."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import httpx
import orjson
import pytest
from test_api_streaming import HUGE_SQL, audit_records, gateway_backends

from conftest import eventually

# An INSERT whose RETURNING rows (about 50 MB) fill every buffer between the gateway and a
# client that stopped reading: the rows are written when the first batch is read.
STALLED_INSERT = (
    "insert into ledger (note) select 'stalled-' || g from generate_series(1, 40000) g "
    "returning id, note, repeat(md5(note), 40) as filler"
)


@pytest.fixture(scope="module")
def impatient_gateway(launch_gateway, gateway_config):
    """Streams may stall for one second."""
    config = gateway_config().replace("[server]\n", '[server]\nstream_idle_timeout = "1s"\n', 1)
    return launch_gateway(config_text=config)


def test_a_stream_the_client_stops_taking_is_rolled_back_and_audited_as_too_slow(
    impatient_gateway, call_as, superuser
):
    writer = call_as(impatient_gateway, "writer", tenant="acme")
    headers = {"Authorization": f"Bearer {writer.token}", "X-Request-Id": "stops-reading"}
    with writer.client.stream("POST", writer.base + "/v1/query", json={"sql": STALLED_INSERT},
                              headers=headers) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()
        next(chunks)  # then nothing more, for longer than the stream may stall
        (record,) = eventually(lambda: audit_records(impatient_gateway, "stops-reading"), "the audit record")
        assert not gateway_backends(superuser, "stops-reading")
        assert superuser.fetchval("select count(*) from ledger where note like 'stalled-%'") == 0
        assert record["status"] == 408
        assert "too slowly" in record["reason"] and "stream_idle_timeout" in record["reason"]
        assert 0 < record["rows"] < 40000
        with pytest.raises(httpx.RemoteProtocolError):  # the body never pretends to be whole
            for _ in chunks:
                pass


def raw_query(url: str, token: str, sql: str, request_id: str) -> socket.socket:
    """A client that sends a query and then reads nothing."""
    address = urlparse(url)
    client = socket.create_connection((address.hostname, address.port))
    payload = orjson.dumps({"sql": sql})
    client.sendall(
        (f"POST /v1/query HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {token}\r\n"
         f"X-Request-Id: {request_id}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
         ).encode() + payload
    )
    return client


def status_of(client: socket.socket) -> int:
    client.settimeout(15)
    return int(client.recv(64).split(b" ", 2)[1])


def test_an_identity_flooding_slow_streams_leaves_connections_for_the_others(gateway, call_as, superuser):
    """The shared gateway has 4 connections and several identities: each may hold 2."""
    writer = call_as(gateway, "writer", tenant="acme")
    floods = [raw_query(gateway.url, writer.token, HUGE_SQL, f"flood-{n}") for n in range(4)]

    def holders() -> set[int]:
        return {n for n in range(4) if gateway_backends(superuser, f"flood-{n}")}

    try:
        eventually(lambda: len(holders()) >= 2, "the flood to hold connections")
        time.sleep(0.5)  # by now the other two wait for one of the writer's connections
        response = call_as(gateway, "reader", tenant="acme").query("select count(*) as n from orders")
        assert response.status_code == 200, response.text
        holding = holders()
        assert len(holding) == 2
        waiting = [floods[n] for n in range(4) if n not in holding]
        assert [status_of(client) for client in waiting] == [429, 429]
    finally:
        for client in floods:
            client.close()
    eventually(lambda: not superuser.activity("application_name LIKE 'gw flood-%'"), "the flood's connections back")
