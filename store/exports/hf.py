"""A training set as a Hugging Face dataset folder: Parquet shards ``data/train-000000.parquet``, ...
and a dataset card ``README.md`` (`faramir.store.exports.card`), which
``datasets.load_dataset(DEST)`` loads as one ``train`` split, offline.

Each row is a record (`faramir.store.exports.records`) with an ``image`` column first: the
`datasets` Image feature, stored as it stores it (a struct of the original ``bytes`` and a
``path``, here the file's name). The features are declared twice, as `datasets` reads them: in
each file's Arrow schema metadata (``huggingface``) and in the card's YAML header. Written with
pyarrow only; `datasets` is needed only to read it.

Images are read into memory one row group at a time (`ROW_GROUP_BYTES` or `ROW_GROUP_ROWS`,
whichever comes first), each hashed as it is read.
"""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from faramir.files import copy_verified
from faramir.store.exports.records import Records

FOLDER = "data"
NAME = "train-{:06d}.parquet"
PATTERN = r"train-(\d{6,})\.parquet"
ROW_GROUP_BYTES = 32 << 20  # image bytes held in memory before they are written as a row group
ROW_GROUP_ROWS = 1024
RECORD_BYTES = 512  # about what a row's record adds to a shard beside its image (for a shard size in bytes)
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image's storage
_DTYPES = {pa.string(): "string", pa.bool_(): "bool", pa.float32(): "float32", pa.float64(): "float64",
           pa.int32(): "int32", pa.int64(): "int64"}


def dtype(t: pa.DataType) -> str:
    """The `datasets` dtype name of an Arrow type ("float32", "timestamp[us, tz=UTC]", ...)."""
    if pa.types.is_timestamp(t):
        return f"timestamp[{t.unit}" + (f", tz={t.tz}]" if t.tz else "]")
    return _DTYPES[t]


def feature(t: pa.DataType) -> dict:
    """The `datasets` feature of a column of type `t`, in the form every `datasets` version reads
    (lists as Sequence, which newer versions read as List)."""
    if t == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        out = {"feature": feature(t.value_type), "_type": "Sequence"}
        return out | ({"length": t.list_size} if pa.types.is_fixed_size_list(t) else {})
    return {"dtype": dtype(t), "_type": "Value"}


def dataset_schema(records: Records) -> pa.Schema:
    """The Parquet schema: the image, then the record; `datasets`' features in its metadata."""
    schema = pa.schema([pa.field("image", IMAGE), *records.schema])
    features = {f.name: feature(f.type) for f in schema}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


class Shard:
    """One Parquet shard being written at `path`."""

    def __init__(self, path, records: Records):
        self.schema = dataset_schema(records)
        self.file = open(path, "xb")
        self.writer = pq.ParquetWriter(self.file, self.schema)
        self.images = self.bytes = 0
        self._rows, self._paths, self._data, self._held = [], [], [], 0

    def add(self, table, row: int, text: str, source: str, image_id: str, size: int, mtime_ns: int | None) -> bool:
        """Add record `row` of `table` with the image read from `source` (stored as `text`): False
        when the file does not hold the content `image_id`."""
        data = copy_verified(source, None, image_id, size)
        if data is None:
            return False
        self._rows.append(table.slice(row, 1))
        self._paths.append(text)
        self._data.append(data)
        self._held += len(data)
        self.images += 1
        self.bytes += len(data) + RECORD_BYTES
        if self._held >= ROW_GROUP_BYTES or len(self._rows) >= ROW_GROUP_ROWS:
            self._flush()
        return True

    def _flush(self) -> None:
        if not self._rows:
            return
        rows = pa.concat_tables(self._rows).combine_chunks()
        rows = rows.set_column(rows.schema.get_field_index("path"), "path", pa.array(self._paths, pa.string()))
        names = pa.array([os.path.basename(p) for p in self._paths], pa.string())
        image = pa.StructArray.from_arrays([pa.array(self._data, pa.binary()), names], fields=list(IMAGE))
        self.writer.write_table(rows.add_column(0, self.schema.field("image"), image).cast(self.schema))
        self._rows, self._paths, self._data, self._held = [], [], [], 0

    def close(self) -> None:
        """Write what is held and the footer, and sync the file."""
        self._flush()
        self.writer.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.file.close()


def shard_ids(path) -> list[str]:
    """The content ids in a whole shard."""
    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def finish(folder, records: Records, cache, where: str, options: dict) -> None:
    """After the rows: an empty shard when there is none (every Parquet reader reads it, with the
    schema; `datasets` itself loads no split without rows), then the card, rewritten for every
    shard there."""
    from faramir.files import atomic_path
    from faramir.store.exports.card import write_card

    shards, table_schema = folder.shards(sys.modules[__name__]), dataset_schema(records)
    if not shards:
        path = folder.dest / FOLDER / NAME.format(0)
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path, overwrite=False) as tmp:
            pq.ParquetWriter(tmp, table_schema).close()  # no row group: `datasets` reads no rows
        shards = [(0, path)]
    features = {f.name: feature(f.type) for f in table_schema}
    write_card(folder.dest, [p for _, p in shards], features, f"{FOLDER}/train-*.parquet", records, cache, where,
               options)
