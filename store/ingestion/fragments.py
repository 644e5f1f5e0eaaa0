"""Committing fragments that Ray workers wrote: the ``images`` step of a chunk as one Lance Append.

A `FragmentWriter` is `faramir.store.ingestion.write.Writer` with one step changed: a chunk's new rows
are the Lance fragments workers wrote into the ``images`` dataset (uncommitted, so invisible),
and committing them is one atomic `LanceOperation.Append`; the chunk's paths, ``files`` and
``failures`` rows follow as in any ingest.

An Append does not look at ids, so a fragment must hold only ids the table lacks. The driver
drops the rows of content another chunk of this run holds (`Fragment.drop`); and when another
process committed to the table since this writer's last commit, the chunk's ids are looked up,
and a row some other process added meanwhile is dropped too, its path added to that process's
row (as the local writer does after a merge that inserted fewer rows than it had). A fragment
with dropped rows is read back and written again without them: the Append never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa

from faramir.store import schema
from faramir.store.cache import Cache
from faramir.store.ingestion.write import Chunk, Writer
from faramir.store.sql import sql_in


@dataclass
class Fragment:
    """A fragment of a chunk: written by a worker, committed by the driver."""

    metadata: object  # lance.fragment.FragmentMetadata
    rows: list[tuple[str, str, int]]  # (content id, path, mtime_ns) of each row, in order
    drop: set[int] = field(default_factory=set)  # rows whose content the table holds by now


@dataclass
class FragmentChunk(Chunk):
    """A chunk whose new rows are fragments (`rows` and `arrays` stay empty)."""

    fragments: list[Fragment] = field(default_factory=list)


class FragmentWriter(Writer):
    """Commits chunks in order, each chunk's fragments as one Append."""

    def __init__(self, cache: Cache, images_schema: pa.Schema, scorers: dict):
        super().__init__(cache, images_schema, scorers)
        self.images_dataset = cache.images().to_lance()
        self.uri = self.images_dataset.uri  # where the workers write the fragments
        self.version = self.images_dataset.version  # the table as the driver planned over it, or newer

    def commit(self, chunk: FragmentChunk) -> None:
        super().commit(chunk)
        self.version = self.images_dataset.latest_version  # what this writer made of the table

    def commit_images(self, chunk: FragmentChunk, now: datetime) -> None:
        import lance

        if not chunk.fragments:
            return
        latest = self.images_dataset.latest_version
        raced = self._drop_raced(chunk) if latest != self.version else {}
        fragments = []
        for f in chunk.fragments:
            fragments += self._without_dropped(f) if f.drop else [f.metadata]
        if fragments:
            lance.LanceDataset.commit(self.uri, lance.LanceOperation.Append(fragments), read_version=latest)
            self.touched.add(schema.IMAGES)
        if raced:  # as the local writer does when another process inserted an id first
            self.lost_inserts += len(raced)
            self.append_paths(raced)

    def _drop_raced(self, chunk: FragmentChunk) -> dict[str, list[tuple[str, int]]]:
        """Drop the rows whose content another process committed since this writer last looked;
        returns their paths, to add to those rows."""
        ours = {cid for f in chunk.fragments for cid, _, _ in f.rows}
        taken = set(self.cache.read(schema.IMAGES, ["id"], sql_in("id", ours)).column("id").to_pylist())
        raced: dict[str, list[tuple[str, int]]] = {}
        for f in chunk.fragments:
            for pos, (cid, path, mtime_ns) in enumerate(f.rows):
                if cid in taken and pos not in f.drop:
                    f.drop.add(pos)
                    raced.setdefault(cid, []).append((path, mtime_ns))
        return raced

    def _without_dropped(self, f: Fragment) -> list:
        """The fragment written again without its dropped rows (read back from its data file)."""
        from lance.file import LanceFileReader
        from lance.fragment import write_fragments

        keep = [i for i in range(len(f.rows)) if i not in f.drop]
        if not keep:
            return []
        files = f.metadata.files
        assert len(files) == 1, "a fragment a worker wrote has one data file"
        rows = LanceFileReader(f"{self.uri}/data/{files[0].path}").read_all().to_table()
        return write_fragments(rows.take(keep), self.uri, schema=self.images_schema)
