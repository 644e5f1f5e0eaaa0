"""A training set as WebDataset tar shards: ``shard-000000.tar``, ``shard-000001.tar``, ... in the
destination folder, each sample a run of files named by its content id:

    <id>.<ext>                      the original image bytes, under the file's own extension
                                    (lower case; from the cached format where the name has none)
    <id>.json                       its record (`faramir.store.exports.records`)
    <id>.faramir_embedding.npy ...  with embeddings: each cached vector as a float32 .npy

``webdataset.WebDataset("DEST/shard-{000000..000009}.tar")`` reads them (the key of a sample is the
content id; `.json` decodes to the record). The tar is written here, with the standard library
only: the image goes from its file into the shard as it is hashed, and a file that turns out to
hold other bytes is cut off the shard again.
"""

from __future__ import annotations

import os
import re
import tarfile

from faramir import json_text
from faramir.files import copy_verified
from faramir.store.exports.records import Records, matrix, npy_bytes

FOLDER = ""  # the shards are the destination's own files
NAME = "shard-{:06d}.tar"
PATTERN = r"shard-(\d{6,})\.tar"
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE  # a tar file ends on a whole record, as tar(1) writes them
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")
_RESERVED = {"json", "npy"}  # the names of a sample's other files
_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def extension(source: str, image_format: str | None) -> str:
    """The extension an image goes under: its file's, else one for its format, else "bin"."""
    ext = os.path.splitext(source)[1][1:].lower()
    if _EXTENSION.fullmatch(ext) and ext not in _RESERVED:
        return ext
    ext = _BY_FORMAT.get(image_format or "", (image_format or "").lower())
    return ext if _EXTENSION.fullmatch(ext) and ext not in _RESERVED else "bin"


def _header(name: str, size: int, mtime: int) -> bytes:
    """The tar header of a regular file (mode 644, owner 0): built here for the usual case (an
    ASCII name of at most 100 bytes, under 8 GiB: a ustar header, as tarfile writes it, at a
    fifth of its cost), else by tarfile (with a pax header)."""
    if not (name.isascii() and len(name) <= 100 and 0 <= size < 8**11 and 0 <= mtime < 8**11):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o644
        return info.tobuf(tarfile.PAX_FORMAT)
    head = bytearray(BLOCK)
    head[0:len(name)] = name.encode("ascii")
    head[100:148] = b"0000644\0" b"0000000\0" b"0000000\0" + b"%011o\0" % size + b"%011o\0" % mtime
    head[148:156] = b" " * 8  # the checksum counts its own field as spaces
    head[156:157] = tarfile.REGTYPE
    head[257:265] = tarfile.POSIX_MAGIC
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class Shard:
    """One tar shard being written at `path`."""

    def __init__(self, path, records: Records):
        self.out = open(path, "xb")
        self.records = records
        self.images = self.bytes = 0
        self._table = self._rows = None
        self._vectors: dict = {}

    def add(self, table, row: int, text: str, source: str, image_id: str, size: int, mtime_ns: int | None) -> bool:
        """Append the sample of record `row` of `table`, its image read from `source` (stored as
        `text`): False, and nothing appended, when the file does not hold the content `image_id`."""
        if table is not self._table:  # a new batch of records: its JSON-able rows and vectors, once
            self._table = table
            self._rows = table.drop_columns(self.records.vectors).to_pylist()
            self._vectors = {name: matrix(table.column(name)) for name in self.records.vectors}
        record = dict(self._rows[row], path=text)
        mtime = (mtime_ns or 0) // 1_000_000_000
        start = self.out.tell()
        self.out.write(_header(f"{image_id}.{extension(source, record['format'])}", size, mtime))
        if copy_verified(source, self.out, image_id, size) is None:
            self.out.seek(start)
            self.out.truncate()
            return False
        self.out.write(_padding(size))
        members = [("json", json_text.dumps(record).encode("utf8"))]
        members += [(f"{name}.npy", npy_bytes(vectors[row])) for name, vectors in self._vectors.items()]
        for suffix, data in members:
            self.out.write(_header(f"{image_id}.{suffix}", len(data), mtime) + data + _padding(len(data)))
        self.images += 1
        self.bytes = self.out.tell()
        return True

    def close(self) -> None:
        """End the archive (two zero blocks, then zeros to a whole record) and sync it."""
        end = self.out.tell() + 2 * BLOCK
        self.out.write(b"\0" * (2 * BLOCK + -end % RECORD))
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()

    def abort(self) -> None:
        self.out.close()


def shard_ids(path) -> list[str]:
    """The content ids of the samples in a whole shard (its member names, read without the data)."""
    with tarfile.open(path, "r:") as tar:
        return list(dict.fromkeys(name.split(".", 1)[0] for name in tar.getnames()))
