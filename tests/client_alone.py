"""A script that only calls the gateway, run by tests/test_client_distribution.py in a virtualenv
holding the client distribution alone: `python -I client_alone.py URL`, the token in
`GATEWAY_TOKEN`. It prints what it received as one JSON object.
"""

import json
import sys
from decimal import Decimal

from gateway_client import EnvToken, GatewayClient, PolicyDenied


def main(url: str) -> None:
    received: dict[str, object] = {}
    with GatewayClient(url, EnvToken("GATEWAY_TOKEN")) as gateway:
        received["rows"] = gateway.query("select id, name from customers where tenant = $1 order by id", "acme").rows
        received["decimal"] = gateway.query("select $1::numeric as n", Decimal("0.10")).rows
        with gateway.stream("select g from generate_series(1, $1) g", 3) as rows:
            received["streamed"] = list(rows)
        try:
            gateway.query("drop table customers")
        except PolicyDenied as error:
            received["denied"] = [type(error).__name__, error.status]
    print(json.dumps(received))


if __name__ == "__main__":
    main(sys.argv[1])
