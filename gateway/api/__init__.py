"""HTTP: the Starlette app factory and the wire formats around the one pipeline."""

from gateway.api.app import create_app

__all__ = ["create_app"]
