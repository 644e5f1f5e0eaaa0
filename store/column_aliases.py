"""Column aliases: new columns of a fragment that read another column's data, by metadata alone.

A Lance fragment lists its data files, and each data file entry maps field ids to column indices
of that file. Two entries may name the same file, so a new field can be mapped onto a column some
other field already stores: it then reads exactly that column's values, and nothing is copied.

A head finetuned from a registered head shares that head's class logits v, free units f and the
labels (functions of v) row for row, so its P_accept_label, P_reject_label, P_logits and P_free
are written this way (`faramir.store.heads.rescore`): at a million rows that is 130 MB not written.

Lance treats such a column as any other: dropping the columns it aliases keeps the file while
the alias refers to it (cleanup keeps every file a fragment lists), and compaction, which reads
every column of the rows it rewrites, writes the aliased values out as plain columns. An update
of some columns in place (a merge_insert of a few columns, as ingest does to add a path) marks
those fields unused in their entry and writes them anew elsewhere; an alias is an entry of its
own, so it keeps reading the values it was made for. That is what it should read here: a head's
scores never change in place (a rescore writes new columns; a gap is filled only in a row that
had no scores, and a fragment with such rows is never aliased).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stored:
    """Where one field's values are in a fragment: the data file entry and the column index."""

    file: object  # lance.fragment.DataFile
    column: int


def locate(fragment, field_ids: list[int]) -> list[Stored] | None:
    """Where each of `field_ids` is stored in `fragment` (FragmentMetadata), or None if any is
    not stored as one column of a Lance v2 file (a legacy v1 file has no column indices)."""
    found: dict[int, Stored] = {}
    for data_file in fragment.files:
        if data_file.file_major_version < 2 or len(data_file.column_indices) != len(data_file.fields):
            continue
        for field, column in zip(data_file.fields, data_file.column_indices):
            if field >= 0 and column >= 0:
                found[field] = Stored(data_file, column)
    stored = [found.get(field) for field in field_ids]
    return None if any(s is None for s in stored) else stored


def leaf_ids(lance_schema, names: list[str]) -> list[int] | None:
    """The field ids of top-level columns `names` of a LanceSchema, or None if any has child
    fields (a nested column is stored as several columns: not aliased here)."""
    fields = [lance_schema.field(name) for name in names]
    if any(f is None or f.children() for f in fields):
        return None
    return [f.id() for f in fields]


def alias_files(new_ids: list[int], stored: list[Stored]) -> list:
    """Data file entries mapping field `new_ids[i]` onto the column `stored[i]` (one entry per
    file named)."""
    by_file: dict[str, tuple[object, list[int], list[int]]] = {}
    for field, where in zip(new_ids, stored):
        _, fields, columns = by_file.setdefault(where.file.path, (where.file, [], []))
        fields.append(field)
        columns.append(where.column)
    return [_entry(f, fields, columns) for f, fields, columns in by_file.values()]


def keep_fields(data_file, field_ids: list[int]):
    """`data_file` (a DataFile entry) mapping only `field_ids`: its other columns stay in the
    file, unread."""
    keep = set(field_ids)
    pairs = [(f, c) for f, c in zip(data_file.fields, data_file.column_indices) if f in keep]
    return _entry(data_file, [f for f, _ in pairs], [c for _, c in pairs])


def _entry(like, fields: list[int], columns: list[int]):
    """A data file entry for the file of entry `like`, mapping `fields` to its `columns`."""
    from lance.fragment import DataFile

    return DataFile(like.path, fields, columns, like.file_major_version, like.file_minor_version,
                    like.file_size_bytes, like.base_id)
