"""HTTP: the Starlette app factory and the wire formats around the one pipeline."""

from gateway.api.app import Front, create_app

__all__ = ["Front", "create_app"]
