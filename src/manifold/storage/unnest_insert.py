"""PostgreSQL: a batch's merged inserts, into any number of tables, as ONE statement sent in autocommit.

    WITH w0 AS (INSERT INTO responses (id, model, …) SELECT * FROM unnest($1::text[], $2::text[], …))
    INSERT INTO response_input_items (response_id, position, …) SELECT * FROM unnest($9::text[], $10::int4[], …)

Each table's rows travel column by column, one array parameter per column, so the SQL text depends only on which
tables the batch fills, never on how many rows: the driver prepares it once per connection and every later batch
is one round trip (Bind, Execute, Sync), where `BEGIN`, one `executemany` per table and `COMMIT` were three or
four. A single statement is atomic without a transaction. Foreign keys between its tables hold: PostgreSQL checks
them when the whole statement ends, once the parent rows of the other data-modifying CTEs are in.

The arrays are cast to unbounded types (`text[]`, not `varchar(128)[]`): an explicit cast to `varchar(n)`
truncates silently, whereas the insert's own assignment to the column rejects a value too long, as the
`executemany` path does. Columns the database generates (an autoincrement `seq`) are left out; a nullable
column a row does not name is NULL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, String, Table
from sqlalchemy.dialects import postgresql

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
Rows = list[dict[str, Any]]


class _Shape:
    __slots__ = ("columns", "names")

    def __init__(self, columns: list[Column[Any]]) -> None:
        self.columns = columns
        self.names = frozenset(c.name for c in columns)


_SHAPES: dict[Table, _Shape] = {}
_STATEMENTS: dict[tuple[Table, ...], str] = {}


def _shape(table: Table) -> _Shape:
    shape = _SHAPES.get(table)
    if shape is None:
        generated = table.autoincrement_column
        shape = _SHAPES[table] = _Shape([c for c in table.columns if c is not generated])
    return shape


def _array_type(column: Column[Any]) -> str:
    if isinstance(column.type, String):  # Text too: text[], whatever the length (see the module's docstring)
        return "text[]"
    return f"{column.type.compile(dialect=_DIALECT)}[]"


def fits(tables: Sequence[Table], rows: dict[Table, Rows]) -> bool:
    """Whether every row names only columns the statement carries (a row naming another column, or a generated
    one, goes through the `executemany` path, which says what is wrong with it)."""
    for table in tables:
        names = _shape(table).names
        for row in rows[table]:
            if not names.issuperset(row):
                return False
    return True


def statement(tables: Sequence[Table]) -> str:
    """The one statement inserting into `tables`, given parents before children."""
    key = tuple(tables)
    sql = _STATEMENTS.get(key)
    if sql is None:
        parts: list[str] = []
        n = 0
        for table in tables:
            columns = _shape(table).columns
            names = ", ".join(_DIALECT.identifier_preparer.quote(c.name) for c in columns)
            arrays = ", ".join(f"${n + i + 1}::{_array_type(c)}" for i, c in enumerate(columns))
            n += len(columns)
            parts.append(
                f"INSERT INTO {_DIALECT.identifier_preparer.format_table(table)} ({names}) "
                f"SELECT * FROM unnest({arrays})"
            )
        ctes = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts[:-1]))
        sql = _STATEMENTS[key] = (f"WITH {ctes} " if ctes else "") + parts[-1]
    return sql


def parameters(tables: Sequence[Table], rows: dict[Table, Rows]) -> tuple[list[Any], ...]:
    """The statement's parameters: for each table, for each of its columns, the column's values in row order."""
    out: list[list[Any]] = []
    for table in tables:
        table_rows = rows[table]
        for column in _shape(table).columns:
            name = column.name
            out.append([row.get(name) for row in table_rows])
    return tuple(out)
