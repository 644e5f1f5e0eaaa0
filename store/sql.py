"""SQL literals for the filters every query passes to Lance, and the filters that look rows up
by id a chunk at a time."""

from __future__ import annotations


def sql_str(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_in(column: str, values) -> str:
    """`column IN ('a', 'b', ...)`; `false` for no values."""
    values = list(values)
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})" if values else "false"


ID_CHUNK = 1024  # ids per `id IN (...)` lookup (the id column's scalar index answers each)


def id_filters(ids, where: str | None = None) -> list[str]:
    """Filters that together pass the rows whose id is one of `ids` (and that pass `where`), each
    `id IN (...)` of at most ID_CHUNK ids; `["false"]` for no ids, so that reading with each and
    concatenating always gives a table, empty or not, of the columns read."""
    ids = list(ids)
    chunks = [sql_in("id", ids[i:i + ID_CHUNK]) for i in range(0, len(ids), ID_CHUNK)] or ["false"]
    return chunks if where is None else [f"({where}) AND {chunk}" for chunk in chunks]
