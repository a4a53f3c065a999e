"""Secret values, looked up by name: a file in `secrets_dir` (re-read when it changes), else
an environment variable of that name.

The only module that reads secrets. Configuration holds secret *names*; values never enter
the configuration objects, logs or responses.
"""

from __future__ import annotations

import os
from pathlib import Path


class MissingSecret(LookupError):
    """A secret named by the configuration is set neither as a file nor in the environment."""


class SecretStore:
    """Resolves secret names. File secrets are re-read when their mtime or size changes, so
    a rotated Kubernetes or Docker secret takes effect without a restart."""

    def __init__(self, secrets_dir: Path | None = None) -> None:
        self.secrets_dir = secrets_dir
        self._file_cache: dict[str, tuple[tuple[int, int], str]] = {}

    def _file_for(self, name: str) -> Path | None:
        if self.secrets_dir is None:
            return None
        path = self.secrets_dir / name
        return path if path.is_file() else None

    def get(self, name: str) -> str:
        """The secret's value. An empty value counts as missing: an HMAC key of "" would let
        anyone sign tokens, and a file caught between truncate and write reads empty."""
        path = self._file_for(name)
        if path is not None:
            value = self._read_file(name, path)
            if not value:
                raise MissingSecret(f'secret "{name}" is empty in {path}')
            return value
        value = os.environ.get(name)
        if value is None:
            where = f" or as a file in {self.secrets_dir}" if self.secrets_dir else ""
            raise MissingSecret(f'secret "{name}" is not set in the environment{where}')
        if not value:
            raise MissingSecret(f'secret "{name}" is empty in the environment')
        return value

    def _read_file(self, name: str, path: Path) -> str:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._file_cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        # Files written by `echo` or editors end in a newline that is not part of the secret.
        value = path.read_text().rstrip("\r\n")
        self._file_cache[name] = (stamp, value)
        return value

    def file_path(self, name: str) -> Path | None:
        """The file holding the secret, when it comes from `secrets_dir` (for libraries that
        need a path, such as a TLS client key)."""
        return self._file_for(name)

    def describe(self, name: str) -> str:
        """Where a secret comes from, for redacted printing; never its value."""
        if self._file_for(name) is not None:
            return f"<secret {name}: file>"
        if name in os.environ:
            return f"<secret {name}: environment>"
        return f"<secret {name}: MISSING>"
