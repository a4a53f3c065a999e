"""edge-sql-gateway: an HTTP-to-SQL gateway for PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edge-sql-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
