"""fakesnow's server behind a front that behaves like Snowflake where a loader depends on it.

fakesnow (DuckDB underneath) is kinder than Snowflake in the places a loader relies on (../shared/
SNOWFLAKE_NOTES.md). Every statement passes through `Emulator.query` first, which adds, each as Snowflake
documents it:

- whole-table locks for UPDATE, DELETE and MERGE held to the end of the transaction; a waiter waits up to its
  session's LOCK_TIMEOUT, then 000625; past the waiter limit, 000625 at once (locks.py);
- DDL inside an open transaction commits it first;
- a client that vanishes leaves its transaction open with its locks until it has been idle while it blocks
  someone (5 minutes, settable), or idle for hours; a clean close rolls back; `CURRENT_TRANSACTION()`,
  `SHOW TRANSACTIONS`, `BEGIN NAME …` and `SYSTEM$ABORT_TRANSACTION(id)` work;
- statements see what was committed before they ran: DuckDB fixes a transaction's snapshot when it begins, so
  the transaction is begun in DuckDB only at its first statement, after that statement's locks are granted;
- Parquet read without logical types unless the COPY says `USE_LOGICAL_TYPE = TRUE` (parquet.py);
- a latency per statement (and per COPY), and a warehouse-seconds account that tests and the bench read at
  `GET /_emulator/account`: statements that need a warehouse count (queries of tables, information_schema
  included, and DML and COPY), SHOW, DESC, PUT, DDL and transaction control do not.

What is left as fakesnow has it: a transaction's later statements read the snapshot of its first statement
(Snowflake's READ COMMITTED gives each statement its own); no deadlock detection; `ABORT_DETACHED_QUERY` and
`STATEMENT_TIMEOUT_IN_SECONDS` are accepted and not acted on; a warehouse's auto-resume minimum is not billed.

Control endpoints (for tests and the bench, never for the loader): `GET /_emulator/account`,
`POST /_emulator/reset`, `GET|POST /_emulator/settings`, `GET /_emulator/transactions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fakesnow.server as fakesnow_server
import snowflake.connector.errors
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message

from recomamp.sandbox.snowflake_emulator import parquet
from recomamp.sandbox.snowflake_emulator.locks import LOCK_ERRNO, LOCK_SQLSTATE, LockRefused, TableLocks, Transaction
from recomamp.sandbox.snowflake_emulator.statements import Kind, Statement, classify

log = logging.getLogger("recomamp.snowflake_emulator")

DEFAULT_LOCK_TIMEOUT_SECONDS = 43_200.0  # Snowflake's default LOCK_TIMEOUT
ABORTED_ERRNO = 604
SUCCESS_SQL = "SELECT 'Statement executed successfully.' AS \"status\""


@dataclass
class Settings:
    statement_latency_ms: float = 0.0
    copy_seconds: float = 0.0  # added to every COPY INTO a table (a large load, compressed)
    blocking_idle_abort_seconds: float = 300.0
    idle_abort_seconds: float = 14_400.0
    lock_waiter_limit: int = 20
    # A fault to script: the next N uploaded files are acknowledged and never stored (a stage's files gone before
    # the COPY, as a purge or a lifecycle rule can do), so the COPY finds no file.
    lose_uploads: int = 0


@dataclass
class Usage:
    statements: int = 0
    warehouse_statements: int = 0
    warehouse_seconds: float = 0.0
    information_schema_queries: int = 0
    lock_waits: int = 0
    lock_wait_seconds: float = 0.0
    lock_refusals: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, statement: Statement, seconds: float, waited: float, refused: bool) -> None:
        self.statements += 1
        self.by_kind[statement.kind.value] += 1
        if statement.needs_warehouse:
            self.warehouse_statements += 1
            self.warehouse_seconds += seconds
        if statement.reads_information_schema:
            self.information_schema_queries += 1
        if waited > 0:
            self.lock_waits += 1
            self.lock_wait_seconds += waited
        if refused:
            self.lock_refusals += 1

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["warehouse_seconds"] = round(self.warehouse_seconds, 4)
        document["lock_wait_seconds"] = round(self.lock_wait_seconds, 4)
        document["by_kind"] = dict(self.by_kind)
        return document


@dataclass(eq=False)
class Session:
    token: str
    user: str
    query_tag: str
    lock_timeout: float
    conn: Any  # fakesnow's FakeSnowflakeConnection
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    transaction: Transaction | None = None
    begun_in_duckdb: bool = False
    last_put_source: str = ""
    # A temporary stage is dropped, files and all, when its session ends [published].
    temporary_stages: set[str] = field(default_factory=set)
    # Said once to the next statement after another session aborted this one's transaction.
    aborted_message: str | None = None


class StatementFailed(Exception):
    def __init__(self, errno: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.errno, self.sqlstate, self.message = errno, sqlstate, message


class Emulator:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.locks = TableLocks()
        self.apply_settings()
        self.sessions: dict[str, Session] = {}
        self.total = Usage()
        self.by_query_tag: dict[str, Usage] = {}
        # Statements running at once, by kind, and the most there were since the last reset: whether loads
        # overlapped, told by the emulator rather than by a stopwatch on a busy machine.
        self.in_flight: Counter[str] = Counter()
        self.peak_in_flight: Counter[str] = Counter()
        self._reaper: asyncio.Task[None] | None = None
        self._ddl = asyncio.Lock()

    def apply_settings(self) -> None:
        self.locks.waiter_limit = self.settings.lock_waiter_limit
        self.locks.blocking_idle_abort_seconds = self.settings.blocking_idle_abort_seconds
        self.locks.idle_abort_seconds = self.settings.idle_abort_seconds

    # --- sessions ----------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        body = _json_body(await request.body(), request)
        data = body.get("data", {})
        parameters = {str(k).upper(): v for k, v in (data.get("SESSION_PARAMETERS") or {}).items()}
        response = await fakesnow_server.login_request(request)
        answer = json.loads(bytes(response.body))
        token = answer.get("data", {}).get("token")
        if token and token in fakesnow_server.sessions:
            self.sessions[token] = Session(
                token=token,
                user=str(data.get("LOGIN_NAME") or ""),
                query_tag=str(parameters.get("QUERY_TAG") or ""),
                lock_timeout=float(parameters.get("LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT_SECONDS)),
                conn=fakesnow_server.sessions[token],
            )
            # The connector closes a session (`DELETE /session`) only when it holds a master token, which
            # fakesnow never hands out: so a clean close would look like a client that died.
            answer["data"]["masterToken"] = f"master-{token}"
            return JSONResponse(answer)
        return response

    async def session(self, request: Request) -> Response:
        """A clean close (`connection.close()`) rolls back and releases; a client that dies sends none."""
        if request.query_params.get("delete"):
            with contextlib.suppress(fakesnow_server.ServerError):
                session = self.sessions.pop(fakesnow_server.to_token(request), None)
                if session is not None:
                    async with session.busy:
                        if session.transaction is not None:
                            await self._end(session, "ROLLBACK")
                        await run_in_threadpool(_drop_temporary_stages, session)
        return await fakesnow_server.session(request)

    # --- statements --------------------------------------------------------------------------------

    async def query(self, request: Request) -> Response:
        try:
            token = fakesnow_server.to_token(request)
        except fakesnow_server.ServerError:
            return await fakesnow_server.query_request(request)
        session = self.sessions.get(token)
        body = _json_body(await request.body(), request)
        if session is None or body.get("describeOnly"):
            return await fakesnow_server.query_request(request)
        sql = str(body.get("sqlText", ""))
        statement = classify(sql)
        if statement.kind is Kind.PUT:
            local = _put_source(sql)
            if session.last_put_source and local == session.last_put_source.rsplit("/", 1)[-1]:
                # The connector asks again for the file's upload URL, naming the file alone (fakesnow plays a
                # GCS stage without credentials): one statement on an AWS or Azure stage, so not counted twice.
                session.last_put_source = ""
                return await fakesnow_server.query_request(request)
            session.last_put_source = local
        else:
            session.last_put_source = ""
        kind = statement.kind.value
        self.in_flight[kind] += 1
        self.peak_in_flight[kind] = max(self.peak_in_flight[kind], self.in_flight[kind])
        try:
            return await self._account(session, statement, sql, request)
        finally:
            self.in_flight[kind] -= 1

    async def _account(self, session: Session, statement: Statement, sql: str, request: Request) -> Response:
        async with session.busy:
            started = time.monotonic()
            waited, refused = [0.0], False
            try:
                response = await self._execute(session, statement, sql, request, waited)
            except StatementFailed as failure:
                refused = failure.errno == LOCK_ERRNO
                response = _error(failure.errno, failure.sqlstate, failure.message)
            elapsed = time.monotonic() - started
        for usage in (self.total, self.by_query_tag.setdefault(session.query_tag, Usage())):
            usage.add(statement, elapsed, waited[0], refused)
        return response

    async def _execute(
        self, session: Session, statement: Statement, sql: str, request: Request, waited: list[float]
    ) -> Response:
        if session.aborted_message is not None:
            message, session.aborted_message = session.aborted_message, None
            if statement.kind is not Kind.ROLLBACK:
                raise StatementFailed(ABORTED_ERRNO, "57014", message)
            return await _delegate(request, SUCCESS_SQL)
        if self.settings.statement_latency_ms:
            await asyncio.sleep(self.settings.statement_latency_ms / 1000)
        kind = statement.kind
        if kind is Kind.BEGIN:
            if session.transaction is None:  # Snowflake ignores a BEGIN inside a transaction
                session.transaction = Transaction(session.token, session.user, statement.transaction_name)
            return await _delegate(request, SUCCESS_SQL)
        if kind in (Kind.COMMIT, Kind.ROLLBACK):
            return await self._end(session, kind.name, request)
        if kind is Kind.CURRENT_TRANSACTION:
            current = session.transaction.id if session.transaction else None
            return await _delegate(request, _values_sql(["CURRENT_TRANSACTION()"], [(_text(current),)]))
        if kind is Kind.SHOW_TRANSACTIONS:
            return await _delegate(request, self._show_transactions(session))
        if kind is Kind.ABORT_TRANSACTION:
            assert statement.transaction_id is not None
            answer = await self._abort_by_id(statement.transaction_id, session)
            return await _delegate(
                request, _values_sql([f"SYSTEM$ABORT_TRANSACTION({statement.transaction_id})"], [(answer,)])
            )
        if kind is Kind.DDL and (stage := _temporary_stage(sql)):
            session.temporary_stages.add(_fully_qualified(stage, session))
        if kind is Kind.DDL and session.transaction is not None:
            log.info("ddl committed the open transaction %s of session %s", session.transaction.id, session.token[:8])
            await self._end(session, "COMMIT")
        if kind is Kind.DDL:
            # Snowflake's DDL is a metadata operation its cloud services apply atomically: two sessions creating
            # one schema or table IF NOT EXISTS at once both succeed. DuckDB reports a catalog write-write
            # conflict instead, so DDL runs one statement at a time here.
            async with self._ddl:
                return await self._run_in_transaction(session, statement, request, waited)
        return await self._run_in_transaction(session, statement, request, waited)

    async def _run_in_transaction(
        self, session: Session, statement: Statement, request: Request, waited: list[float]
    ) -> Response:
        transaction = session.transaction or Transaction(session.token, session.user, explicit=False)
        transaction.busy += 1
        try:
            for table in self._lock_names(session, statement):
                try:
                    waited[0] += await self.locks.acquire(table, transaction, session.lock_timeout)
                except LockRefused as refused:
                    raise StatementFailed(LOCK_ERRNO, LOCK_SQLSTATE, refused.message) from None
            if transaction.aborted_because:
                raise StatementFailed(ABORTED_ERRNO, "57014", _aborted(transaction))
            if session.transaction is transaction and not session.begun_in_duckdb:
                await run_in_threadpool(session.conn.cursor().execute, "BEGIN")
                session.begun_in_duckdb = True
            if statement.kind is Kind.COPY and self.settings.copy_seconds:
                await asyncio.sleep(self.settings.copy_seconds)
            if statement.kind is Kind.COPY and statement.copy_options.get("USE_LOGICAL_TYPE") != "TRUE":
                with parquet.legacy_parquet_read() as legacy:
                    response = await _delegate(request)
                return _explain_integer_timestamps(response, legacy)
            return await _delegate(request)
        finally:
            transaction.busy -= 1
            transaction.last_active = time.monotonic()
            if not transaction.explicit:
                self.locks.release_all(transaction)
            elif transaction.aborted_because and session.transaction is transaction:
                await self._finish_abort(session, transaction)  # aborted while this statement ran

    def _lock_names(self, session: Session, statement: Statement) -> list[str]:
        names = []
        for database, schema, table in statement.locks:
            database = (database or session.conn.database or "").upper()
            schema = (schema or session.conn.schema or "").upper()
            names.append(f"{database}.{schema}.{table.upper()}")
        return names

    async def _end(self, session: Session, verb: str, request: Request | None = None) -> Response:
        """COMMIT or ROLLBACK the session's transaction (a no-op outside one, as in Snowflake)."""
        transaction, begun = session.transaction, session.begun_in_duckdb
        session.transaction, session.begun_in_duckdb = None, False
        try:
            if begun:
                if request is not None:
                    return await _delegate(request, verb)
                await run_in_threadpool(session.conn.cursor().execute, verb)
            return await _delegate(request, SUCCESS_SQL) if request is not None else Response()
        finally:
            if transaction is not None:
                self.locks.release_all(transaction)

    # --- aborts ------------------------------------------------------------------------------------

    async def abort(self, transaction: Transaction, reason: str) -> None:
        if transaction.aborted_because:
            return
        transaction.aborted_because = reason
        log.warning("transaction %s aborted: %s", transaction.id, reason)
        session = self.sessions.get(transaction.session)
        if session is None or session.transaction is not transaction:
            self.locks.release_all(transaction)
            return
        if transaction.busy:
            return  # its running statement finishes first (_run_in_transaction ends the transaction then)
        async with session.busy:
            if session.transaction is transaction:
                await self._finish_abort(session, transaction)

    async def _finish_abort(self, session: Session, transaction: Transaction) -> None:
        await self._end(session, "ROLLBACK")
        session.aborted_message = _aborted(transaction)

    async def _abort_by_id(self, transaction_id: int, caller: Session) -> str:
        for session in list(self.sessions.values()):
            transaction = session.transaction
            if transaction is None or transaction.id != transaction_id:
                continue
            if session is caller:
                await self._end(session, "ROLLBACK")
                return f"Aborted transaction id {transaction_id}"
            await self.abort(transaction, f"SYSTEM$ABORT_TRANSACTION({transaction_id}) by session {caller.token[:8]}")
            return f"Aborted transaction id {transaction_id}"
        return f"Transaction {transaction_id} is not running"

    async def reap(self, interval: float = 0.05) -> None:
        """Snowflake's aborts of idle transactions: while one blocks someone, and after hours regardless."""
        while True:
            await asyncio.sleep(interval)
            for blocking, reason in self.locks.to_abort():
                await self.abort(blocking, reason)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                idle = session.transaction
                if (
                    idle is not None
                    and not idle.busy
                    and not idle.tables
                    and now - idle.last_active >= self.settings.idle_abort_seconds
                ):
                    await self.abort(idle, f"it was idle for {now - idle.last_active:.0f} s")

    def _show_transactions(self, caller: Session) -> str:
        """SHOW TRANSACTIONS lists the current user's transactions."""
        rows = [
            (
                _text(t.id),
                t.user,
                session.token[:16],
                t.name or "",
                t.started_on.strftime("%Y-%m-%d %H:%M:%S.%f"),
                t.state,
                "IN_SESSION",
            )
            for session in self.sessions.values()
            if (t := session.transaction) is not None and t.user == caller.user
        ]
        return _values_sql(["id", "user", "session", "name", "started_on", "state", "scope"], rows)

    # --- control ---------------------------------------------------------------------------------

    async def account(self, _: Request) -> Response:
        return JSONResponse(
            {
                "total": self.total.as_json(),
                "by_query_tag": {k: v.as_json() for k, v in self.by_query_tag.items()},
                "peak_in_flight": dict(self.peak_in_flight),
            }
        )

    async def reset(self, _: Request) -> Response:
        self.total, self.by_query_tag = Usage(), {}
        self.peak_in_flight = Counter(self.in_flight)
        return JSONResponse({"reset": True})

    async def settings_endpoint(self, request: Request) -> Response:
        if request.method == "POST":
            changes = await request.json()
            unknown = set(changes) - set(asdict(self.settings))
            if unknown:
                return JSONResponse({"error": f"unknown settings: {sorted(unknown)}"}, status_code=400)
            for key, value in changes.items():
                setattr(self.settings, key, type(getattr(self.settings, key))(value))
            self.apply_settings()
        return JSONResponse(asdict(self.settings))

    async def upload(self, request: Request) -> Response:
        if self.settings.lose_uploads > 0:
            self.settings.lose_uploads -= 1
            await request.body()
            log.warning("upload %s acknowledged and dropped (lose_uploads)", request.path_params["path"])
            return Response()
        return await fakesnow_server.bucket_upload(request)

    async def transactions(self, _: Request) -> Response:
        return JSONResponse(
            [
                {
                    "id": t.id,
                    "name": t.name,
                    "user": t.user,
                    "tables": sorted(t.tables),
                    "idle_seconds": round(time.monotonic() - t.last_active, 3),
                    "busy": bool(t.busy),
                }
                for session in self.sessions.values()
                if (t := session.transaction) is not None
            ]
        )

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(_: Starlette) -> Any:
            self._reaper = asyncio.create_task(self.reap(), name="emulator-reaper")
            try:
                yield
            finally:
                self._reaper.cancel()

        routes = [
            Route("/session/v1/login-request", self.login, methods=["POST"]),
            Route("/session", self.session, methods=["POST"]),
            Route("/queries/v1/query-request", self.query, methods=["POST"]),
            Route("/_emulator/account", self.account, methods=["GET"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/settings", self.settings_endpoint, methods=["GET", "POST"]),
            Route("/_emulator/transactions", self.transactions, methods=["GET"]),
            Route("/fs_bucket/{path:path}", self.upload, methods=["PUT"]),
            *(r for r in fakesnow_server.routes if getattr(r, "path", "") not in _OURS),
        ]
        return Starlette(routes=routes, lifespan=lifespan)


_OURS = {"/session/v1/login-request", "/session", "/queries/v1/query-request", "/fs_bucket/{path:path}"}


_PUT_SOURCE = re.compile(r"^\s*PUT\s+'?file://([^'\s]+)", re.I)


def _put_source(sql: str) -> str:
    match = _PUT_SOURCE.match(sql)
    return match.group(1) if match else ""


_TEMPORARY_STAGE = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?TEMPORARY\s+STAGE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\S+)", re.I
)


def _temporary_stage(sql: str) -> str | None:
    match = _TEMPORARY_STAGE.match(sql)
    return match.group(1).replace('"', "") if match else None


def _fully_qualified(name: str, session: Session) -> str:
    parts = name.upper().split(".")
    while len(parts) < 3:
        parts.insert(0, (session.conn.schema if len(parts) == 1 else session.conn.database) or "")
    return ".".join(parts)


def _drop_temporary_stages(session: Session) -> None:
    """A temporary stage goes with its session, files and all."""
    import shutil

    from fakesnow.transforms import stage

    for name in session.temporary_stages:
        database, schema, stage_name = name.split(".")
        with contextlib.suppress(Exception):  # fakesnow has no DROP STAGE: its catalog row goes instead
            session.conn._duck_conn.execute(
                "DELETE FROM _fs_global._fs_information_schema._fs_stages "
                "WHERE database_name = ? AND schema_name = ? AND name = ?",
                (database, schema, stage_name),
            )
        with contextlib.suppress(Exception):
            shutil.rmtree(stage.internal_dir(name), ignore_errors=True)


def _json_body(body: bytes, request: Request) -> dict[str, Any]:
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    try:
        loaded = json.loads(body or b"{}")
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


async def _delegate(request: Request, sql: str | None = None) -> Response:
    """fakesnow's answer to the request, or to the same request carrying `sql` instead (no bindings)."""
    if sql is None:
        return await fakesnow_server.query_request(request)
    body = _json_body(await request.body(), request)
    body["sqlText"] = sql
    body.pop("bindings", None)
    payload = json.dumps(body).encode()
    scope = dict(request.scope)
    scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k.lower() != b"content-encoding"]

    async def receive() -> Message:
        return {"type": "http.request", "body": payload, "more_body": False}

    return await fakesnow_server.query_request(Request(scope, receive))


def _values_sql(columns: list[str], rows: Sequence[Sequence[str | None]]) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    if not rows:
        nulls = ", ".join(f'CAST(NULL AS VARCHAR) AS "{c}"' for c in columns)
        return f"SELECT {nulls} WHERE 1 = 0"
    values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
    return f"SELECT * FROM (VALUES {values}) AS t({names})"


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _text(value: int | None) -> str | None:
    return None if value is None else str(value)


def _aborted(transaction: Transaction) -> str:
    return f"Transaction {transaction.id} was aborted: {transaction.aborted_because}"


def _error(errno: int, sqlstate: str, message: str) -> JSONResponse:
    code = f"{errno:06d}"
    return JSONResponse(
        {"data": {"errorCode": code, "sqlState": sqlstate}, "code": code, "message": message, "success": False}
    )


def _explain_integer_timestamps(response: Response, legacy: parquet.LegacyRead) -> Response:
    """A COPY that failed on a timestamp read as an integer says what Snowflake would have done."""
    if not legacy.integer_columns:
        return response
    answer = json.loads(bytes(response.body))
    message = str(answer.get("message") or "")
    if answer.get("success", True) or not any(word in message.lower() for word in ("cast", "conversion")):
        return response
    columns = ", ".join(sorted(legacy.integer_columns))
    return _error(
        100035,
        "22007",
        f"Timestamp out of range: the Parquet column(s) {columns} carry a TIMESTAMP logical type without a "
        "ConvertedType, which COPY reads as an INTEGER unless FILE_FORMAT has USE_LOGICAL_TYPE = TRUE; loaded "
        "into a timestamp column, Snowflake takes that integer (microseconds) as seconds and lands dates around "
        f"the year 55 million. ({answer.get('message')})",
    )


def map_duckdb_conflicts() -> None:
    """A conflict DuckDB detects itself (row versions, concurrent DDL) answers as Snowflake's lock error, not
    as an unmapped exception that fakesnow turns into an HTTP 500 the connector retries for minutes."""
    import duckdb
    from fakesnow.cursor import FakeSnowflakeCursor

    original = FakeSnowflakeCursor.execute
    if getattr(original, "_emulator", False):
        return

    def execute(self: FakeSnowflakeCursor, *args: Any, **kwargs: Any) -> FakeSnowflakeCursor:
        try:
            return original(self, *args, **kwargs)
        except duckdb.TransactionException as exc:
            raise snowflake.connector.errors.ProgrammingError(
                msg=f"Statement aborted: another transaction holds the rows it writes ({exc})",
                errno=LOCK_ERRNO,
                sqlstate=LOCK_SQLSTATE,
            ) from None

    execute._emulator = True  # type: ignore[attr-defined]
    FakeSnowflakeCursor.execute = execute  # type: ignore[method-assign]


def keep_null_timestamps() -> None:
    """fakesnow sends a NULL timestamp to the client as the epoch (1970-01-01): a struct whose validity it drops.
    Snowflake sends NULL."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from fakesnow import arrow

    original = arrow.timestamp_to_sf_struct
    if getattr(original, "_emulator", False):
        return

    def timestamp_to_sf_struct(ts: Any) -> Any:
        if isinstance(ts, pa.ChunkedArray):
            ts = ts.combine_chunks()
        if not ts.null_count:
            return original(ts)
        struct = original(pc.fill_null(ts, pa.scalar(0, ts.type)))
        fields = [struct.type.field(i) for i in range(struct.type.num_fields)]
        children = [struct.field(i) for i in range(struct.type.num_fields)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=ts.is_null())

    timestamp_to_sf_struct._emulator = True  # type: ignore[attr-defined]
    arrow.timestamp_to_sf_struct = timestamp_to_sf_struct
