"""One blocking connection to SQLite or PostgreSQL behind the same small interface.

SQL is written once with `?` placeholders and the few words the dialects spell differently in
braces (see DIALECTS); each backend translates. Calls are serialised on the connection's own
thread (`Database.run`), so the event loop never waits on the database."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from services.common.errors import ServiceError
from services.common.urls import redact

T = TypeVar("T")
Row = tuple[Any, ...]

DIALECTS = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "blob": "BLOB"},
    "postgres": {"serial": "BIGSERIAL PRIMARY KEY", "blob": "BYTEA"},
}


class DuplicateKey(Exception):
    """A row with this key exists already (e.g. a segment stored twice)."""


class StoreUnavailable(ServiceError):
    """The database cannot be reached (or stays locked); the next call connects again."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "STORE_UNAVAILABLE"
    default_retry_after = 2.0


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def fetchall(self) -> list[Row]: ...
    def fetchone(self) -> Row | None: ...


class Transaction:
    """Statements in one transaction, in the backend's dialect."""

    def __init__(self, cursor: Cursor, dialect: str) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def sql(self, statement: str) -> str:
        statement = statement.format(**DIALECTS[self.dialect])
        return statement.replace("?", "%s") if self.dialect == "postgres" else statement

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self.sql(statement), tuple(params))

    def all(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(self.sql(statement), tuple(params))
        return [tuple(row) for row in self._cursor.fetchall()]

    def one(self, statement: str, params: Sequence[Any] = ()) -> Row | None:
        self._cursor.execute(self.sql(statement), tuple(params))
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def insert(self, statement: str, params: Sequence[Any], key: str) -> int:
        """Run an INSERT and return the generated `key`."""
        self._cursor.execute(self.sql(f"{statement} RETURNING {key}"), tuple(params))
        row = self._cursor.fetchone()
        assert row is not None
        return int(row[0])

    def lock(self, table: str) -> None:
        """Serialise writers of `table` until commit (SQLite's writer lock already does)."""
        if self.dialect == "postgres":
            self._cursor.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")


class Database:
    def __init__(self, connect: Callable[[], Any], dialect: str, where: str) -> None:
        self.dialect = dialect
        self.where = where  # for messages, without credentials
        self._connect = connect
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{dialect}-db")
        self._connection: Any = self._executor.submit(connect).result()
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A transaction, committed when the block ends normally (call on the database thread)."""
        with self._lock:
            cursor = self._connection.cursor()
            try:
                if self.dialect == "sqlite":
                    cursor.execute("BEGIN IMMEDIATE")
                yield Transaction(cursor, self.dialect)
                self._connection.commit()
            except BaseException:
                self._connection.rollback()
                raise
            finally:
                cursor.close()

    def call(self, work: Callable[[Transaction], T]) -> T:
        """`work` in one transaction, blocking."""
        return self._executor.submit(self._in_transaction, work).result()

    async def run(self, work: Callable[[Transaction], T]) -> T:
        """`work` in one transaction on the database thread."""
        return await asyncio.wrap_future(self._executor.submit(self._in_transaction, work))

    def _in_transaction(self, work: Callable[[Transaction], T]) -> T:
        try:
            if self._connection is None:  # lost by an earlier call
                self._connection = self._connect()
            with self.transaction() as transaction:
                return work(transaction)
        except Exception as exc:
            kinds = {kind.__name__ for kind in type(exc).__mro__}  # sqlite3's or psycopg's
            if "IntegrityError" in kinds:
                raise DuplicateKey(str(exc)) from exc
            if kinds & {"OperationalError", "InterfaceError"}:
                if self.dialect == "postgres":
                    self._drop_connection()
                raise StoreUnavailable(f"the database at {self.where} is unavailable: {exc}") from exc
            raise

    def _drop_connection(self) -> None:
        with contextlib.suppress(Exception):
            self._connection.close()
        self._connection = None

    def close(self) -> None:
        if self._connection is not None:
            self._executor.submit(self._connection.close).result()
        self._executor.shutdown(wait=True)


def open_sqlite(path: Path) -> Database:
    def connect() -> sqlite3.Connection:
        # Transactions are begun explicitly (BEGIN IMMEDIATE: the writer lock up front) and ended by
        # commit()/rollback().
        connection = sqlite3.connect(path, isolation_level=None, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    path.parent.mkdir(parents=True, exist_ok=True)
    return Database(connect, "sqlite", str(path))


def open_postgres(url: str) -> Database:
    import psycopg  # only a server configured for PostgreSQL needs the driver

    def connect() -> Any:
        return psycopg.connect(url, connect_timeout=10)

    return Database(connect, "postgres", redact(url))

