"""SQL literals for the filters every query passes to Lance."""

from __future__ import annotations


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values) -> str:
    """`column IN ('a', 'b', ...)`; `false` for no values."""
    values = list(values)
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})" if values else "false"
