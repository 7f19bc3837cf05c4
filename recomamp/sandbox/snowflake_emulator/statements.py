"""What a statement is, as Snowflake treats it: which locks it takes, whether it commits an open transaction,
whether it needs a warehouse. Pure: SQL text in, a `Statement` out."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from fakesnow.dialect import parse_one
from sqlglot import exp


class Kind(enum.Enum):
    BEGIN = "begin"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    CURRENT_TRANSACTION = "current_transaction"
    ABORT_TRANSACTION = "abort_transaction"
    SHOW_TRANSACTIONS = "show_transactions"
    DDL = "ddl"  # CREATE, ALTER, DROP: commits the open transaction first
    DML = "dml"  # INSERT, UPDATE, DELETE, MERGE
    COPY = "copy"
    PUT = "put"
    SELECT = "select"
    METADATA = "metadata"  # SHOW, DESC(RIBE), USE: cloud services only
    OTHER = "other"


@dataclass(frozen=True)
class Statement:
    kind: Kind
    # Tables whose whole-table lock the statement takes (UPDATE, DELETE, MERGE), as written (maybe unqualified).
    locks: tuple[tuple[str | None, str | None, str], ...] = ()
    needs_warehouse: bool = False
    reads_information_schema: bool = False
    transaction_name: str | None = None
    transaction_id: int | None = None
    copy_options: dict[str, str] = field(default_factory=dict)


_BEGIN = re.compile(
    r"^\s*(?:BEGIN|START\s+TRANSACTION)(?:\s+(?:WORK|TRANSACTION))?(?:\s+NAME\s+(\S+?))?\s*;?\s*$", re.I
)
_COMMIT = re.compile(r"^\s*COMMIT(?:\s+WORK)?\s*;?\s*$", re.I)
_ROLLBACK = re.compile(r"^\s*ROLLBACK(?:\s+WORK)?\s*;?\s*$", re.I)
_CURRENT_TRANSACTION = re.compile(r"^\s*SELECT\s+CURRENT_TRANSACTION\s*\(\s*\)\s*;?\s*$", re.I)
_ABORT_TRANSACTION = re.compile(r"^\s*SELECT\s+SYSTEM\$ABORT_TRANSACTION\s*\(\s*'?(\d+)'?\s*\)\s*;?\s*$", re.I)
_SHOW_TRANSACTIONS = re.compile(r"^\s*SHOW\s+TRANSACTIONS(?:\s+IN\s+ACCOUNT)?\s*;?\s*$", re.I)
_METADATA = re.compile(r"^\s*(?:SHOW|DESC|DESCRIBE|USE)\b", re.I)
_PUT = re.compile(r"^\s*PUT\b", re.I)
_COPY_OPTION = re.compile(r"\b(USE_LOGICAL_TYPE|BINARY_AS_TEXT)\s*=\s*(\w+)", re.I)


def classify(sql: str) -> Statement:
    if match := _BEGIN.match(sql):
        name = match.group(1)
        return Statement(Kind.BEGIN, transaction_name=name.strip("'\"") if name else None)
    if _COMMIT.match(sql):
        return Statement(Kind.COMMIT)
    if _ROLLBACK.match(sql):
        return Statement(Kind.ROLLBACK)
    if _CURRENT_TRANSACTION.match(sql):
        return Statement(Kind.CURRENT_TRANSACTION)
    if match := _ABORT_TRANSACTION.match(sql):
        return Statement(Kind.ABORT_TRANSACTION, transaction_id=int(match.group(1)))
    if _SHOW_TRANSACTIONS.match(sql):
        return Statement(Kind.SHOW_TRANSACTIONS)
    if _PUT.match(sql):
        return Statement(Kind.PUT)
    if _METADATA.match(sql):
        return Statement(Kind.METADATA)
    try:
        expression = parse_one(sql)
    except Exception:  # fakesnow answers what it cannot parse; here it is only "other"
        return Statement(Kind.OTHER)
    information_schema = any(t.db.upper() == "INFORMATION_SCHEMA" for t in expression.find_all(exp.Table))
    if isinstance(expression, exp.Copy):
        options = {key.upper(): value.upper() for key, value in _COPY_OPTION.findall(sql)}
        return Statement(Kind.COPY, needs_warehouse=True, copy_options=options)
    if isinstance(expression, exp.Update | exp.Delete | exp.Merge):
        target = expression.this
        locks = ((target.catalog or None, target.db or None, target.name),) if isinstance(target, exp.Table) else ()
        return Statement(Kind.DML, locks=locks, needs_warehouse=True, reads_information_schema=information_schema)
    if isinstance(expression, exp.Insert):
        return Statement(Kind.DML, needs_warehouse=True, reads_information_schema=information_schema)
    if isinstance(expression, exp.Create | exp.Alter | exp.Drop | exp.TruncateTable):
        return Statement(Kind.DDL)
    if isinstance(expression, exp.Query):
        # A query that reads a table (information_schema included) needs a warehouse; one of constants or
        # context functions (SELECT CURRENT_VERSION()) is answered by cloud services.
        reads_table = any(True for _ in expression.find_all(exp.Table))
        return Statement(Kind.SELECT, needs_warehouse=reads_table, reads_information_schema=information_schema)
    return Statement(Kind.OTHER)
