"""Which rows an export writes, batch by batch: the rows passing a filter (less the near-duplicates
a `--dedupe` leaves out), or the best ones in `top`'s order; each batch as result rows. A
`Selection` holds the choice, the same for every format."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from faramir.store.cache import Cache
from faramir.store.filters import Filter
from faramir.store.heads.columns import read_columns, results
from faramir.store.schema import HeadColumns
from faramir.store.sql import sql_in

READ_BATCH = 4096  # rows read at a time


@dataclass(frozen=True)
class Selection:
    """Which rows an export writes: those passing `filter`, less the near-duplicates that are not
    their group's keeper (`dedupe`, at `dedupe_threshold`, keeper by `keep`); with `sort` or
    `limit`, only the best `limit` in `top`'s order."""

    filter: Filter
    sort: str | None = None
    descending: bool = True
    limit: int | None = None
    dedupe: bool = False
    dedupe_threshold: float | None = None
    keep: str = "confidence"

    def batches(self, cache: Cache, cols: HeadColumns, ds, extra: list[str]) -> Iterator[tuple[int, pa.Table]]:
        """(total, result rows with the `extra` columns) per batch, over one version `ds` of the
        images table read with the head's columns `cols`."""
        from faramir.store.queries.ranking import top

        f = self.filter
        drop = dropped(cache, f, self.dedupe_threshold, self.keep) if self.dedupe else set()
        if self.sort is None and self.limit is None:
            return filtered_batches(ds, cols, f, extra, drop)
        wanted = None if self.limit is None else self.limit + len(drop)
        ids = top(cache, sort=self.sort or "confidence", descending=self.descending, limit=wanted,
                  filter=f).column("id").to_pylist()
        return ranked_batches(ds, cols, f, extra, [i for i in ids if i not in drop][:self.limit])

    def options(self) -> dict:
        """The choice as plain values (what a resumed export must repeat)."""
        f = self.filter
        return {"head": f.head, "threshold": f.threshold, "accepted": f.accepted, "labels": list(f.labels),
                "min_confidence": f.min_confidence, "max_confidence": f.max_confidence,
                "min_aesthetic": f.min_aesthetic, "max_aesthetic": f.max_aesthetic, "sort": self.sort,
                "descending": self.descending, "limit": self.limit, "dedupe": self.dedupe,
                "dedupe_threshold": self.dedupe_threshold if self.dedupe else None,
                "keep": self.keep if self.dedupe else None}


def dropped(cache: Cache, f: Filter, threshold: float | None, keep: str) -> set[str]:
    from faramir.store.near_duplicates import DEFAULT_SIMILARITY
    from faramir.store.near_duplicates.groups import non_keepers

    return non_keepers(cache, f, DEFAULT_SIMILARITY if threshold is None else threshold, keep)


def filtered_batches(ds, cols: HeadColumns, f: Filter, extra: list[str],
                      drop: set[str] = frozenset()) -> Iterator[tuple[int, pa.Table]]:
    """(total, result rows) per batch of the rows passing `f`, less the ids `drop`; one empty batch
    when none do."""
    columns, where = [*read_columns(cols), *extra], f.where(cols)
    total = ds.count_rows(where) - len(drop)
    dropped = pa.array(sorted(drop), pa.string())
    empty = True
    for batch in ds.to_batches(columns=columns, filter=where, batch_size=READ_BATCH):
        rows = pa.Table.from_batches([batch])
        if drop:
            rows = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=dropped)))
        if rows.num_rows:
            empty = False
            yield total, results(rows, cols, f.threshold, extra=extra)
    if empty:  # still a header / a schema
        yield 0, results(ds.to_table(columns=columns, filter="false"), cols, f.threshold, extra=extra)


def ranked_batches(ds, cols: HeadColumns, f: Filter, extra: list[str], ids: list[str]) -> Iterator[tuple[int, pa.Table]]:
    """(total, result rows) per batch of the rows `ids`, in that order."""
    columns = [*read_columns(cols), *extra]
    if not ids:
        yield 0, results(ds.to_table(columns=columns, filter="false"), cols, f.threshold, extra=extra)
    for lo in range(0, len(ids), READ_BATCH):
        chunk = ids[lo:lo + READ_BATCH]
        rows = ds.to_table(columns=columns, filter=sql_in("id", chunk))
        order = {image_id: n for n, image_id in enumerate(chunk)}
        rows = rows.take(pa.array(sorted(range(len(rows)), key=lambda n: order[rows.column("id")[n].as_py()])))
        yield len(ids), results(rows, cols, f.threshold, extra=extra)


def marked(batches, generated: str):
    """The batches with a `weights_generated` column (and Parquet metadata) when `generated`."""
    for total, table in batches:
        if generated:
            table = table.append_column("weights_generated", pa.array([generated] * len(table), pa.string()))
            table = table.replace_schema_metadata({"faramir.weights_generated": generated})
        yield total, table
