"""A private PostgreSQL server for the tests: Debian's binaries, run as the `postgres` user.

One server per test session (initdb takes a second or two) on a free port of 127.0.0.1, with a
fresh database per test (`new_database()`). The `kuma` role logs in over TCP with a password (as a
control plane would); the superuser uses the Unix socket in the server's temp dir (trust). Durability
is off: a test database need not survive a power cut. `stop()` / `start()` / `restart()` make
outages. Everything is removed at the end, also when a test fails.

Shared by the tests (tests/support/postgres.py: skip, or fail with CI=true, when PostgreSQL is
missing) and the benchmarks (bench/cp_scale.py).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from control_plane.config import PostgresConfig
from labkit.ports import free_port

USER = "kuma"
PASSWORD = "kuma-test-secret"
_OS_USER = "postgres"


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run here; the message says what is missing."""


def find_binaries() -> Path:
    """The server binaries' directory; PostgresUnavailable when PostgreSQL cannot run here."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; apt-get install postgresql)"
        )
    if os.geteuid() != 0:
        raise PostgresUnavailable(
            "running a private PostgreSQL needs root (to run initdb as the postgres user)"
        )
    try:
        pwd.getpwnam(_OS_USER)
    except KeyError:
        raise PostgresUnavailable(
            "no `postgres` system user (apt-get install postgresql creates it)"
        ) from None
    return bin_dir


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="kuma-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log = self.base / "server.log"
        self.port = free_port()
        self._names = itertools.count(1)
        os.chmod(self.base, 0o700)
        self.socket_dir.mkdir()
        entry = pwd.getpwnam(_OS_USER)
        for path in (self.base, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _as_postgres(self, *argv: str) -> None:
        done = subprocess.run(
            ["runuser", "-u", _OS_USER, "--", *argv], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip() or done.stdout.strip()}\n{log}")

    def init(self) -> None:
        pwfile = self.base / "pw"
        pwfile.write_text("unused\n")
        os.chown(pwfile, pwd.getpwnam(_OS_USER).pw_uid, -1)
        self._as_postgres(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            _OS_USER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        self.start()
        self.admin(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Fast shutdown: every session is ended (clients see their connections die)."""
        self._as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin(self, sql: str, db: str = "postgres") -> list[tuple[object, ...]]:
        """Run `sql` as the superuser over the Unix socket; its rows (if any)."""
        with psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=_OS_USER, dbname=db, autocommit=True
        ) as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    def new_database(self) -> str:
        name = f"kuma_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} OWNER {USER}")
        return name

    def config(self, db_name: str, **overrides: object) -> PostgresConfig:
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
            "db_name": db_name,
            "resync_interval": 1.0,
            **overrides,
        }
        return PostgresConfig(**values)  # type: ignore[arg-type]

    def env(self, db_name: str) -> dict[str, str]:
        """The KUMA_STORE_* variables of a kuma-cp on `db_name`."""
        return {
            "KUMA_STORE_TYPE": "postgres",
            "KUMA_STORE_POSTGRES_HOST": "127.0.0.1",
            "KUMA_STORE_POSTGRES_PORT": str(self.port),
            "KUMA_STORE_POSTGRES_USER": USER,
            "KUMA_STORE_POSTGRES_PASSWORD": PASSWORD,
            "KUMA_STORE_POSTGRES_DB_NAME": db_name,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(bin_dir: Path | None = None) -> Iterator[PostgresServer]:
    """A started server, removed at the end; PostgresUnavailable when it cannot run here."""
    server = PostgresServer(bin_dir or find_binaries())
    try:
        server.init()
        yield server
    finally:
        server.close()


def migrated_database(server: PostgresServer) -> str:
    """A new database with this kuma-cp's schema."""
    from control_plane.store.postgres import connect
    from control_plane.store.postgres_schema import migrate_up

    name = server.new_database()
    config = server.config(name)
    with connect(config) as conn:
        migrate_up(conn, name)
    return name
