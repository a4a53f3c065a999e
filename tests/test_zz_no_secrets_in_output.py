"""Nothing secret anywhere: every line any gateway process printed during this session (audit
and operational logs) is searched for every token and secret the tests used.

Named to run last, after the end-to-end tests have made their requests.
"""

from __future__ import annotations

import httpx

from conftest import GATEWAY_LOGS, ISSUED_PASSWORDS, MINTED_TOKENS


def test_no_gateway_output_contains_a_token_or_secret(gateway, gateway_env, mint, jwt_secret, tls_files, database):
    # Requests whose failure paths could tempt a log line: a forged token, a denied and a
    # failing statement, and parameter values that must not be echoed.
    forged = mint("writer", tenant="acme")[:-4] + "AAAA"
    httpx.post(f"{gateway.url}/v1/query", json={"sql": "select 1"}, headers={"Authorization": f"Bearer {forged}"})
    valid = mint("writer", tenant="acme")
    for body in ({"sql": "delete from orders"}, {"sql": "select $1::int", "params": ["param-value-not-logged"]}):
        httpx.post(f"{gateway.url}/v1/query", json=body, headers={"Authorization": f"Bearer {valid}"})

    secrets = {
        "jwt secret": jwt_secret,
        "database password": gateway_env["TEST_DB_PASSWORD"],
        "admin login password": database.admin_password,
        **{f"issued login password {i}": password for i, password in enumerate(ISSUED_PASSWORDS)},
        "client key": tls_files.client_key.read_text().splitlines()[1],
        "parameter value": "param-value-not-logged",
        "forged token": forged,
        **{f"token {i}": token for i, token in enumerate(MINTED_TOKENS)},
        # A token's signature alone identifies it too.
        **{f"signature {i}": token.rsplit(".", 1)[1] for i, token in enumerate(MINTED_TOKENS)},
    }
    assert GATEWAY_LOGS, "no gateway ran in this session"
    leaks = [
        f"{name} in {path.name}"
        for path in GATEWAY_LOGS
        if path.exists()
        for text in [path.read_text(errors="replace")]
        for name, value in secrets.items()
        if value and value in text
    ]
    assert not leaks, leaks
