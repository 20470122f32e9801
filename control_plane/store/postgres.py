"""PostgreSQL store (KUMA_STORE_TYPE=postgres): several control-plane instances on one database.

Every write is one transaction on a pooled connection (psycopg 3, psycopg_pool), in READ
COMMITTED, where each statement sees what other transactions committed before it started:
- a write's `requires`/`owner` row is read `FOR SHARE` before the write itself, so a concurrent
  delete of it either waits for our commit (and then sees our row) or has committed (we see the row
  gone: MissingError);
- a delete locks its row `FOR UPDATE` first, and only then, in a new statement, finds what goes
  with it (recursive over owners): writers that got in before the lock have committed by then.

Change events cross instances with LISTEN/NOTIFY: each write notifies inside its transaction
(PostgreSQL delivers at commit), and a daemon thread listening on its own connection passes the
other instances' events to our listeners (ours were passed after commit). Notifications sent while
that connection is down are lost, so the thread also compares `(type, mesh, name) -> version` of
the whole table with what it last saw, every `resync_interval` and at once after reconnecting,
and emits an event for each difference.

The schema is never changed here: `kuma-cp migrate up` does that (postgres_schema.py); a database
whose schema is not exactly ours is refused. Errors come out as StoreError naming host:port/db and
PostgreSQL's reason, never the password.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg.conninfo import make_conninfo

from control_plane.config import PostgresConfig
from control_plane.store.base import (
    ChangeEvent,
    ConflictError,
    Guard,
    LeaderLock,
    MissingError,
    ResourceKey,
    ResourceStore,
    StoredResource,
    StoreError,
    Write,
    now_rfc3339,
)
from control_plane.store.postgres_schema import advisory_key, check_version

log = logging.getLogger(__name__)
# The pool logs a warning per failed connection attempt while PostgreSQL is down; the outage is
# reported by the store's errors and the notification thread's one line instead.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

CHANNEL = "kuma_resource_changes"
LEADER_LOCK_KEY = advisory_key("kuma-cp-lock")
LISTEN_BACKOFF_FIRST = 0.5
LISTEN_BACKOFF_MAX = 5.0
# The leader lock's connection: a dead database or a cut network is noticed within seconds.
QUICK_TIMEOUT_S = 2
_TLS_MODES = {
    "disable": "disable",
    "verifyNone": "require",
    "verifyCa": "verify-ca",
    "verifyFull": "verify-full",
}
POOL_RECONNECT_TIMEOUT_S = 1.0
# "unlimited" (Kuma's maxOpenConnections: 0) for a pool that needs a bound
_UNLIMITED_POOL = 10_000

_COLUMNS = (
    "type, mesh, name, spec, version, creation_time, modification_time, owner_type, owner_mesh, owner_name"
)
_KEY_MATCH = "type = %s AND mesh = %s AND name = %s"


class UnreachableError(StoreError):
    """PostgreSQL did not answer (refused, timed out, starting up): worth trying again later,
    unlike bad credentials or a schema problem."""


def where(config: PostgresConfig) -> str:
    return f"{config.host}:{config.port}/{config.db_name}"


def conninfo(config: PostgresConfig, quick: bool = False, name: str = "kuma-cp") -> str:
    """libpq's connection string for `config`; `quick` for a connection that must notice a dead
    server within seconds (keepalives, a 2 s statement timeout); `name` shows in pg_stat_activity."""
    params: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "user": config.user,
        "password": config.password,
        "dbname": config.db_name,
        "sslmode": _TLS_MODES[config.tls_mode],
        "connect_timeout": QUICK_TIMEOUT_S if quick else config.connection_timeout,
        "application_name": name,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
    }
    for name, value in (
        ("sslcert", config.tls_cert_path),
        ("sslkey", config.tls_key_path),
        ("sslrootcert", config.tls_ca_path),
    ):
        if value:
            params[name] = value
    if quick:
        params.update(
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=2,
            tcp_user_timeout=QUICK_TIMEOUT_S * 1000,
            options=f"-c statement_timeout={QUICK_TIMEOUT_S * 1000}",
        )
    return make_conninfo(**params)


def reason(exc: BaseException, config: PostgresConfig) -> str:
    """PostgreSQL's (or libpq's) reason in one line, with the password blanked should it appear."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    secret = config.password
    if len(secret) >= 4 and secret not in (config.user, config.db_name, config.host):
        text = text.replace(secret, "***")
    return text


def is_unreachable(exc: psycopg.Error) -> bool:
    """A connection failure that may heal by itself (refused, timeout, server starting or stopping),
    as opposed to one a person must fix (password, missing database or role, TLS settings)."""
    text = str(exc)
    if "FATAL" not in text:
        return isinstance(exc, psycopg.OperationalError)
    return any(
        hint in text
        for hint in (
            "starting up",
            "shutting down",
            "recovery mode",
            "too many clients",
            "terminating connection",
        )
    )


def connect(config: PostgresConfig, quick: bool = False, name: str = "kuma-cp") -> psycopg.Connection:
    """A new autocommit connection; UnreachableError or StoreError (bad credentials, ...)."""
    try:
        return psycopg.connect(conninfo(config, quick, name), autocommit=True)
    except psycopg.Error as exc:
        error = UnreachableError if is_unreachable(exc) else StoreError
        verb = "cannot reach" if error is UnreachableError else "cannot connect to"
        raise error(f"{verb} PostgreSQL at {where(config)} ({reason(exc, config)})") from None


class PostgresStore(ResourceStore):
    shared = True  # several control-plane instances on one database

    def __init__(self, config: PostgresConfig) -> None:
        super().__init__()
        self.config = config
        self.where = where(config)
        self.instance_id = uuid.uuid4().hex
        self._reported: set[tuple[Any, ...]] = set()
        self._closed = threading.Event()
        self._seen_lock = threading.Lock()
        self._seen: dict[ResourceKey, int] = {}  # what the listeners were last told: key -> version
        self.listen_name = f"kuma-cp-listen-{self.instance_id[:8]}"
        listen_conn = connect(
            config, name=self.listen_name
        )  # first: reachability and credentials, with libpq's reason
        try:
            check_version(listen_conn, self.where)
            listen_conn.execute(f"LISTEN {CHANNEL}".encode())
            self._seen = self._versions(listen_conn)
        except psycopg.Error as exc:
            listen_conn.close()
            raise StoreError(f"PostgreSQL at {self.where}: opening failed: {reason(exc, config)}") from None
        except StoreError:
            listen_conn.close()
            raise
        self._pool = psycopg_pool.ConnectionPool(
            conninfo(config),
            min_size=config.min_open_connections,
            max_size=config.max_open_connections or _UNLIMITED_POOL,
            kwargs={"autocommit": True},
            timeout=float(config.connection_timeout),
            max_lifetime=config.max_connection_lifetime,
            max_idle=config.max_connection_idle_time,
            check=psycopg_pool.ConnectionPool.check_connection,  # a dead connection is not handed out
            # The pool retries a failed connection with a growing backoff and meanwhile makes no
            # other attempt: give up after a second, so that once PostgreSQL is back the next
            # request connects at once rather than after a backoff grown during the outage.
            reconnect_timeout=POOL_RECONNECT_TIMEOUT_S,
            name="kuma-store",
            open=False,
        )
        self._pool.open()
        self._listener = _Listener(self, listen_conn)
        self._listener.start()

    # --- reads --------------------------------------------------------------------------------
    def get(self, key: ResourceKey) -> StoredResource | None:
        with self._connection("reading") as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM resources WHERE {_KEY_MATCH}", _values(key)
            ).fetchone()
        return None if row is None else self._decode(row)

    def list(
        self, type: str, mesh: str | None = None, offset: int = 0, limit: int | None = None
    ) -> tuple[list[StoredResource], int]:
        where_sql, params = (
            ("type = %s", [type]) if mesh is None else ("type = %s AND mesh = %s", [type, mesh])
        )
        # One statement, so the page and the total are of one snapshot; the total comes even with
        # an empty page.
        query = f"""
            WITH matching AS (SELECT {_COLUMNS} FROM resources WHERE {where_sql})
            SELECT (SELECT count(*) FROM matching), page.*
              FROM (SELECT 1) one
              LEFT JOIN LATERAL (
                  SELECT * FROM matching ORDER BY mesh, name LIMIT %s OFFSET %s
              ) page ON true
        """
        with self._connection("reading") as conn:
            rows = conn.execute(query.encode(), [*params, limit, offset]).fetchall()
        total = rows[0][0]
        found = [row[1:] for row in rows if row[1] is not None]
        items = [item for item in map(self._decode, found) if item is not None]
        return items, total - (len(found) - len(items))

    def _decode(self, row: Sequence[Any]) -> StoredResource | None:
        """The row as a resource, or None (logged once per row version) when it cannot be read."""
        try:
            spec = json.loads(row[3])
            if not isinstance(spec, dict):
                raise ValueError("the spec is not a JSON object")
        except ValueError as exc:
            if (*row[:3], row[4]) not in self._reported:
                self._reported.add((*row[:3], row[4]))
                log.error(
                    "PostgreSQL at %s: skipping the unreadable row %s (%s)",
                    self.where,
                    "/".join(row[:3]),
                    exc,
                )
            return None
        owner = None if None in row[7:10] else ResourceKey(*row[7:10])
        return StoredResource(ResourceKey(*row[:3]), spec, row[4], row[5], row[6], owner)

    # --- writes -------------------------------------------------------------------------------
    def upsert_all(self, writes: Sequence[Write]) -> list[tuple[StoredResource, bool]]:
        with self._connection("writing") as conn, conn.transaction():
            results = [self._upsert(conn, write) for write in writes]
            self._announce(conn, [("upsert", stored.key, stored.version) for stored, _ in results])
        self._tell([("upsert", stored.key, stored.version) for stored, _ in results])
        return results

    def _upsert(self, conn: psycopg.Connection, write: Write) -> tuple[StoredResource, bool]:
        """Inside the caller's transaction."""
        key = write.key
        for needed in (write.requires, write.owner):
            # FOR SHARE: a delete of `needed` waits for our commit, or has committed and we see it gone.
            if needed is not None and not _locked_for_share(conn, needed):
                raise MissingError(needed)
        spec_json = json.dumps(write.spec, separators=(",", ":"))
        now = now_rfc3339()
        owner = _values(write.owner) if write.owner else (None, None, None)
        row_values = (*_values(key), spec_json, now, now, *owner)
        expected = write.expected_version
        if expected is None:
            query = _UPSERT
        elif expected == 0:
            query = _INSERT_NEW
        else:
            query = _UPDATE_IF_VERSION
            row_values = (spec_json, now, *owner, *_values(key), expected)
        row = conn.execute(query, row_values).fetchone()
        if row is None:
            raise ConflictError(f"{key.type} {key.name!r} was changed by someone else")
        version, creation_time = row
        stored = StoredResource(key, json.loads(spec_json), version, creation_time, now, write.owner)
        return stored, version == 1  # a row is created at version 1 and only ever goes up

    def delete(
        self,
        key: ResourceKey,
        expected_version: int | None = None,
        cascade_mesh: bool = False,
        guards: Sequence[Guard] = (),
    ) -> bool:
        with self._connection("deleting") as conn, conn.transaction():
            row = conn.execute(
                f"SELECT version FROM resources WHERE {_KEY_MATCH} FOR UPDATE", _values(key)
            ).fetchone()
            if row is None:
                return False
            if expected_version is not None and row[0] != expected_version:
                raise ConflictError(f"{key.type} {key.name!r} was changed by someone else")
            for guard, version in guards:  # locked: a writer of it waits for our commit
                held = conn.execute(
                    f"SELECT version FROM resources WHERE {_KEY_MATCH} FOR UPDATE", _values(guard)
                ).fetchone()
                if (held[0] if held else 0) != version:
                    raise ConflictError(f"{guard.type} {guard.name!r} was changed by someone else")
            # A new statement: it sees the rows writers committed while we waited for the lock.
            doomed = [
                ResourceKey(*found)
                for found in conn.execute(
                    _DELETE_DOOMED, (*_values(key), cascade_mesh and bool(key.name), key.name)
                )
            ]
            self._announce(conn, [("delete", gone, 0) for gone in doomed])
        self._tell([("delete", gone, 0) for gone in doomed])
        return True

    def _announce(self, conn: psycopg.Connection, changes: list[tuple[str, ResourceKey, int]]) -> None:
        """NOTIFY the other instances, inside the transaction (PostgreSQL delivers at commit)."""
        payloads = [
            json.dumps(
                {
                    "op": op,
                    "type": k.type,
                    "mesh": k.mesh,
                    "name": k.name,
                    "version": v,
                    "instance": self.instance_id,
                }
            )
            for op, k, v in changes
        ]
        if payloads:
            conn.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, payloads))

    def _tell(self, changes: list[tuple[str, ResourceKey, int]]) -> None:
        """After commit: remember the versions (so a resync does not repeat them) and notify."""
        with self._seen_lock:
            for op, key, version in changes:
                if op == "upsert":
                    self._seen[key] = version
                else:
                    self._seen.pop(key, None)
        for op, key, _ in changes:
            self._notify(ChangeEvent(op, key))  # type: ignore[arg-type]

    # --- the notification thread's side --------------------------------------------------------
    def _versions(self, conn: psycopg.Connection) -> dict[ResourceKey, int]:
        return {
            ResourceKey(t, m, n): v
            for t, m, n, v in conn.execute("SELECT type, mesh, name, version FROM resources")
        }

    def _resync(self, conn: psycopg.Connection) -> None:
        """Emit an event for each difference between the table and what the listeners were told."""
        now = self._versions(conn)
        with self._seen_lock:
            # A copy: writers update self._seen while we compare (a shared dict changed size
            # under this loop and killed the notification thread at N=2,000).
            before, self._seen = self._seen, dict(now)
        changed = [ChangeEvent("upsert", k) for k, v in now.items() if before.get(k) != v]
        changed += [ChangeEvent("delete", k) for k in before.keys() - now.keys()]
        for event in changed:
            self._notify(event)

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message["instance"] == self.instance_id:
                return  # ours: notified after our commit already
            key = ResourceKey(message["type"], message["mesh"], message["name"])
            op = message["op"]
            if op not in ("upsert", "delete"):
                raise ValueError(op)
        except (ValueError, KeyError, TypeError):
            log.warning(
                "PostgreSQL at %s: ignoring a malformed change notification %r", self.where, payload[:200]
            )
            return
        self._tell([(op, key, message.get("version", 0))])

    # --- plumbing -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connection(self, action: str) -> Iterator[psycopg.Connection]:
        """A pooled connection; psycopg's errors as StoreError with PostgreSQL's reason."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout:
            raise StoreError(
                f"PostgreSQL at {self.where}: {action} failed: no connection within "
                f"{self.config.connection_timeout}s ({self._probe()})"
            ) from None
        except psycopg.Error as exc:
            raise StoreError(
                f"PostgreSQL at {self.where}: {action} failed: {reason(exc, self.config)}"
            ) from exc

    def _probe(self) -> str:
        """Why no connection could be made (the pool keeps its connection errors to itself)."""
        try:
            connect(self.config, quick=True).close()
        except StoreError as exc:
            return str(exc)
        return "all pooled connections busy (KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS), or reconnecting"

    def leader_lock(self) -> LeaderLock:
        return PostgresLeaderLock(self.config, f"kuma-cp-leader-{self.instance_id[:8]}")

    def close(self) -> None:
        self._closed.set()
        self._listener.join(timeout=10)
        self._pool.close()


# Each returns (version, creation_time) of the row written, or no row (ConflictError).
_UPSERT = f"""
INSERT INTO resources ({_COLUMNS}) VALUES (%s, %s, %s, %s, 1, %s, %s, %s, %s, %s)
ON CONFLICT (type, mesh, name) DO UPDATE SET
    spec = EXCLUDED.spec, version = resources.version + 1, modification_time = EXCLUDED.modification_time,
    owner_type = EXCLUDED.owner_type, owner_mesh = EXCLUDED.owner_mesh, owner_name = EXCLUDED.owner_name
RETURNING version, creation_time
""".encode()
_INSERT_NEW = f"""
INSERT INTO resources ({_COLUMNS}) VALUES (%s, %s, %s, %s, 1, %s, %s, %s, %s, %s)
ON CONFLICT (type, mesh, name) DO NOTHING
RETURNING version, creation_time
""".encode()
_UPDATE_IF_VERSION = f"""
UPDATE resources SET spec = %s, version = version + 1, modification_time = %s,
    owner_type = %s, owner_mesh = %s, owner_name = %s
 WHERE {_KEY_MATCH} AND version = %s
RETURNING version, creation_time
""".encode()

# `key`, with a flag every resource of the mesh `key.name`, and what those own, transitively.
_DELETE_DOOMED = b"""
WITH RECURSIVE doomed(type, mesh, name) AS (
    SELECT type, mesh, name FROM resources
     WHERE (type = %s AND mesh = %s AND name = %s) OR (%s AND mesh = %s)
    UNION
    SELECT r.type, r.mesh, r.name FROM resources r
      JOIN doomed d ON r.owner_type = d.type AND r.owner_mesh = d.mesh AND r.owner_name = d.name
)
DELETE FROM resources r USING doomed d
 WHERE r.type = d.type AND r.mesh = d.mesh AND r.name = d.name
RETURNING r.type, r.mesh, r.name
"""


def _values(key: ResourceKey) -> tuple[str, str, str]:
    return (key.type, key.mesh, key.name)


def _locked_for_share(conn: psycopg.Connection, key: ResourceKey) -> bool:
    return (
        conn.execute(f"SELECT 1 FROM resources WHERE {_KEY_MATCH} FOR SHARE", _values(key)).fetchone()
        is not None
    )


class _Listener(threading.Thread):
    """LISTENs on its own connection, resyncs periodically, checks the pool's idle connections,
    and reconnects with backoff when the connection is lost (one log line per outage)."""

    def __init__(self, store: PostgresStore, conn: psycopg.Connection) -> None:
        super().__init__(name="kuma-store-listen", daemon=True)
        self.store = store
        self.conn: psycopg.Connection | None = conn

    def run(self) -> None:
        store, backoff, outage_since = self.store, LISTEN_BACKOFF_FIRST, 0.0
        while not store._closed.is_set():
            try:
                if self.conn is None:
                    self.conn = connect(store.config, name=store.listen_name)
                    self.conn.execute(f"LISTEN {CHANNEL}".encode())
                    store._resync(self.conn)  # what was missed while we were away
                    if outage_since:
                        log.info(
                            "PostgreSQL at %s: change notifications back after %.1fs",
                            store.where,
                            time.monotonic() - outage_since,
                        )
                    backoff, outage_since = LISTEN_BACKOFF_FIRST, 0.0
                self._serve(self.conn)
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any failure
                if not isinstance(exc, psycopg.Error | StoreError):
                    log.exception("PostgreSQL at %s: the change notification thread failed", store.where)
                self._drop()
                if not outage_since:
                    outage_since = time.monotonic()
                    log.warning(
                        "PostgreSQL at %s: lost the change notification connection (%s); reconnecting",
                        store.where,
                        exc if isinstance(exc, StoreError) else reason(exc, store.config),
                    )
                store._closed.wait(backoff)
                backoff = min(backoff * 2, LISTEN_BACKOFF_MAX)
        self._drop()

    def _serve(self, conn: psycopg.Connection) -> None:
        """Until closed or the connection fails: notifications, resyncs, pool health checks."""
        store = self.store
        next_resync = time.monotonic() + store.config.resync_interval
        next_check = time.monotonic() + store.config.health_check_interval
        while not store._closed.is_set():
            for notice in conn.notifies(timeout=0.5):
                store._received(notice.payload)
            now = time.monotonic()
            if now >= next_resync:
                store._resync(conn)
                next_resync = now + store.config.resync_interval
            if now >= next_check:
                store._pool.check()  # drops idle connections the server has closed
                next_check = now + store.config.health_check_interval

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class PostgresLeaderLock(LeaderLock):
    """A session advisory lock on a connection of its own: held as long as that session lives, so
    a control plane that loses its database (or whose backend is terminated) loses the lock."""

    def __init__(self, config: PostgresConfig, name: str = "kuma-cp-leader") -> None:
        self._config = config
        self.name = name  # the connection's application_name
        self._conn: psycopg.Connection | None = None
        self._held = False
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._held and self._alive():
                return True
            self._held = False
            try:
                if self._conn is None or not self._alive():
                    self._drop()
                    self._conn = connect(self._config, quick=True, name=self.name)
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()
            except (psycopg.Error, StoreError) as exc:
                log.debug("leader lock: %s", exc)
                self._drop()
                return False
            self._held = bool(row and row[0])
            return self._held

    def still_held(self) -> bool:
        with self._lock:
            if self._held and self._alive():
                return True
            self._drop()
            return False

    def release(self) -> None:
        with self._lock:
            if self._held and self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK_KEY,))
            self._drop()

    def _alive(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _drop(self) -> None:
        self._held = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
