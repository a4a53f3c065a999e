"""`python -m gateway.healthcheck`: a container's health check, exit 0 when `/healthz` answers 200.

It reads the configuration `gateway serve` reads (`GATEWAY_CONFIG`, `GATEWAY_ENV`) for the
port, so a port changed there needs no change to the image. It asks the configured host, or
loopback when the gateway listens on every address. It owns nothing the server uses.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from gateway.config import ConfigError, ServerConfig, load_config

# Below the image's HEALTHCHECK --timeout, so a stuck gateway is reported by this check, not killed.
TIMEOUT_SECONDS = 2.0
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def healthz_url(server: ServerConfig) -> str:
    host = WILDCARD_HOSTS.get(server.host, server.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{server.port}/healthz"


def main() -> int:
    path = os.environ.get("GATEWAY_CONFIG")
    if not path:
        print("gateway healthcheck: GATEWAY_CONFIG is not set", file=sys.stderr)
        return 1
    try:
        url = healthz_url(load_config(path, env=os.environ.get("GATEWAY_ENV") or None).server)
    except ConfigError as error:
        print(f"gateway healthcheck: {error}", file=sys.stderr)
        return 1
    # No proxy: the gateway is in this container, whatever HTTP_PROXY says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except OSError as error:  # refused, unreachable, timed out
        print(f"gateway healthcheck: {url}: {error}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"gateway healthcheck: {url} answered {status}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
