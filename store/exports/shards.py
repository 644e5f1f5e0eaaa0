"""Writing a training set in shards, whatever the format (`webdataset`: tar files; `hf`: Parquet
files and a dataset card): the folder, the shard series and the row loop.

- **The folder.** A training set goes into a new or empty folder. Its first act is to write
  ``faramir-export.json`` there (the format, the cache and every option that chooses or shapes a
  sample); an export holds a lock on that file while it writes, so a second export into the same
  folder at the same time is refused.
- **Whole shards only.** Each shard is written under a hidden temporary name beside its final
  one, synced, and linked into place only once complete, so a killed export (even SIGKILL, or a
  power cut after the sync) leaves whole shards and at most a temporary file, which the next
  export there removes.
- **Resuming.** A rerun into the same folder with the same options finishes it: the content ids
  in its whole shards count as present (`ExportResult.present`) and the rest go into new shards
  numbered after the last. So a rerun after the collection grew adds the new images as new
  shards, and a rerun of a finished export writes nothing. A rerun with other options, into a
  folder holding other files, or for another cache is refused in one line.
- **Verified bytes.** An image's bytes are hashed while they are read (`faramir.files.
  copy_verified`); a file of another size is passed over unread. A row none of whose paths still
  holds its content is skipped and reported (`ExportResult.changed`, or `missing` when none of
  them exists); the export goes on.
- **Bounded memory.** Rows are read 4,096 at a time (`faramir.store.exports.rows`), and a shard
  keeps at most a row group of images in memory (`hf`) or none (`webdataset`: bytes go from the
  file to the shard as they are hashed).

`shard_size`: a number of images per shard ("1000", or an int), or bytes with a unit ("500MB",
"1GiB"; B, KB, MB, GB, TB, and KiB, MiB, GiB, TiB). Default: `DEFAULT_SHARD_SIZE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from faramir import json_text
from faramir.store import limits
from faramir.store.errors import ExportError
from faramir.store.exports.records import Records
from faramir.store.heads.columns import on_head
from faramir.store.schema import path_from_column

MANIFEST = "faramir-export.json"
DEFAULT_SHARD_SIZE = "500MB"
PROGRESS_EVERY = 256  # rows between progress calls
SAMPLE_OVERHEAD = 2048  # bytes a sample adds beside its image (headers, its record), for a byte limit
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_OPTIONS = {"accepted": "--accepted/--rejected", "labels": "--label", "descending": "the order"}
_STALE = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")  # a temporary shard (or card) a killed export left


@dataclass(frozen=True)
class ShardSize:
    """At most `images` images, or `bytes` bytes, per shard (one of the two)."""

    images: int | None = None
    bytes: int | None = None

    @property
    def text(self) -> str:
        return str(self.images) if self.images is not None else f"{self.bytes}B"

    def full(self, images: int, size: int, adding: int) -> bool:
        """Whether a shard of `images` images and `size` bytes takes no sample of `adding` bytes more."""
        if self.images is not None:
            return images >= self.images
        return images > 0 and size + adding + SAMPLE_OVERHEAD > self.bytes


def parse_shard_size(value: int | str | None) -> ShardSize:
    """A shard size as the option gives it: images ("1000", 1000) or bytes ("500MB")."""
    text = str(DEFAULT_SHARD_SIZE if value is None else value).strip().lower().replace(" ", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]*)", text)
    if match is None or (match.group(2) and match.group(2) not in _UNITS) or \
            (not match.group(2) and "." in match.group(1)):
        raise ExportError(f"shard size {value!r}: give a number of images (1000) or bytes with a unit "
                          f"(500MB, 1GiB)")
    number, unit = match.groups()
    if not unit:
        limits.check("shard size (images)", int(number), 1, limits.MAX_SHARD_IMAGES, ExportError)
        return ShardSize(images=int(number))
    size = int(float(number) * _UNITS[unit])
    limits.check("shard size (bytes)", size, limits.MIN_SHARD_BYTES, limits.MAX_SHARD_BYTES, ExportError)
    return ShardSize(bytes=size)


def _format(fmt: str):
    if fmt == "webdataset":
        from faramir.store.exports import webdataset

        return webdataset
    from faramir.store.exports import hf

    return hf


def write_dataset(dest: Path, fmt: str, cache, selection, result, progress, *, with_embeddings: bool,
                  with_logits: bool, shard_size: int | str | None) -> None:
    """Write (or finish) the training set of `selection` at `dest` in format `fmt`."""
    size = parse_shard_size(shard_size)
    kind = _format(fmt)
    options = {**selection.options(), "with_embeddings": with_embeddings, "with_logits": with_logits,
               "shard_size": size.text}
    where = cache.uri if "://" in cache.uri else os.path.realpath(cache.uri)
    with Folder(dest, fmt, where, options) as folder:
        def run(cols, ds) -> Records:
            records = Records(cache, selection.filter, cols, with_logits=with_logits, with_embeddings=with_embeddings)
            series = Series(folder, kind, records, size, result)
            with series:
                batches = selection.batches(cache, cols, ds, records.extra)
                _write_rows(batches, records, series, folder.done_ids(kind), result, progress)
            return records

        records = on_head(cache, selection.filter.head, run)
        if hasattr(kind, "finish"):
            kind.finish(folder, records, cache, where, options)


def _write_rows(batches, records: Records, series: Series, done: pa.Array, result, progress) -> None:
    for total, rows in batches:
        if not len(rows):
            continue
        table = records.table(rows)
        present = pc.is_in(table.column("id"), value_set=done).to_numpy(zero_copy_only=False) if len(done) \
            else [False] * len(table)
        facts = table.select(["id", "paths", "size"]).to_pylist()
        mtimes = rows.column("mtime_ns").to_pylist()
        for i, row in enumerate(facts):
            result.rows += 1
            if present[i]:
                result.present += 1
            else:
                outcome = series.add(table, i, row["paths"] or [], row["id"], row["size"], mtimes[i])
                if outcome == "written":
                    result.written += 1
                else:
                    getattr(result, outcome).append((row["paths"] or ["(no path)"])[0])
            if progress is not None and result.rows % PROGRESS_EVERY == 0:
                progress(result.rows, total)
        if progress is not None:
            progress(result.rows, total)


class Folder:
    """A training set's folder: new or empty, or holding an export made with the same options;
    locked while an export writes it (`with Folder(...) as folder`)."""

    def __init__(self, dest: Path, fmt: str, cache_uri: str, options: dict):
        self.dest, self.fmt = dest, fmt
        self.manifest = {"faramir_export": 1, "format": fmt, "cache": cache_uri, "options": options}
        self._lock = None
        self._new, self._made = False, []

    def __enter__(self) -> Folder:
        path = self.dest / MANIFEST
        if self.dest.is_dir() and not path.exists() and any(self.dest.iterdir()):
            raise ExportError(f"{self.dest} holds other files; export a training set into a new or empty folder")
        self._made = [d for d in (self.dest, *self.dest.parents) if not d.exists()]
        self.dest.mkdir(parents=True, exist_ok=True)
        from faramir import __version__
        from faramir.files import atomic_path

        record = {**self.manifest, "faramir_version": __version__,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            with atomic_path(path, overwrite=False) as tmp:
                tmp.write_text(json_text.dumps(record, indent=2) + "\n", encoding="utf8")
            self._new = True
        except FileExistsError:
            self._new = False  # an earlier export here, or one starting now: compared below
        self._check_same(path)
        self._lock = _locked(path, self.dest)
        self._remove_stale()
        return self

    def __exit__(self, kind, value, tb) -> None:
        """Unlock; after a failure before any shard (an unknown head, Ctrl-C), take back what this
        export made, so the command can be run again as corrected."""
        if kind is not None and self._new and self._lock is not None:
            left = [p for p in self.dest.rglob("*") if p.name != MANIFEST and not _STALE.match(p.name)
                    and not p.is_dir()]
            if not left:
                (self.dest / MANIFEST).unlink(missing_ok=True)
                for folder in [self.dest / "data", *self._made]:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
        if self._lock is not None:
            self._lock.close()  # and so its lock

    def _check_same(self, path: Path) -> None:
        try:
            earlier = json.loads(path.read_text(encoding="utf8"))
            assert isinstance(earlier, dict)
        except (OSError, ValueError, AssertionError):
            raise ExportError(f"{path}: not an export record faramir wrote; export into a new or empty "
                              f"folder") from None
        if earlier.get("format") != self.fmt or earlier.get("cache") != self.manifest["cache"]:
            raise ExportError(f"{self.dest} holds a {earlier.get('format')} export of {earlier.get('cache')}; "
                              f"export into a new or empty folder")
        theirs = earlier.get("options") or {}
        differ = [_OPTIONS.get(k, "--" + k.replace("_", "-")) for k, v in self.manifest["options"].items()
                  if theirs.get(k) != v]
        if differ:
            raise ExportError(f"{self.dest} holds an export made with other options ({', '.join(differ)}); "
                              f"rerun it with the same options to finish it, or export into a new folder")

    def _remove_stale(self) -> None:
        for folder in (self.dest, self.dest / "data"):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if _STALE.match(entry.name):
                        entry.unlink(missing_ok=True)

    def shards(self, kind) -> list[tuple[int, Path]]:
        """(number, path) of the whole shards of `kind`'s format here, in order."""
        folder = self.dest / kind.FOLDER
        if not folder.is_dir():
            return []
        found = ((re.fullmatch(kind.PATTERN, entry.name), entry) for entry in folder.iterdir())
        return sorted((int(m.group(1)), entry) for m, entry in found if m)

    def done_ids(self, kind) -> pa.Array:
        """The content ids in the whole shards here."""
        ids = [i for _, path in self.shards(kind) for i in kind.shard_ids(path)]
        return pa.array(ids, pa.string())


def _locked(path: Path, dest: Path):
    """`path` opened and locked for this process; ExportError if another export holds it."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock, as before
        return None
    handle = open(path, "rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ExportError(f"{dest}: another export is writing there now; wait for it to end") from None
    return handle


class Series:
    """The shards one export run writes, numbered after those already there: each a temporary
    file until it is full, then synced and linked into place. Leaving the block by an exception
    discards the shard in progress (`with Series(...)`); a normal exit places it."""

    def __init__(self, folder: Folder, kind, records: Records, size: ShardSize, result):
        self.folder, self.kind, self.records, self.size, self.result = folder, kind, records, size, result
        done = folder.shards(kind)
        self.number = done[-1][0] + 1 if done else 0
        self.shard = None
        self.tmp: Path | None = None

    def __enter__(self) -> Series:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self._place()
        else:
            self._discard()

    def add(self, table: pa.Table, row: int, paths: list[str], image_id: str, size: int, mtime_ns: int) -> str:
        """Add row `row` of the record `table` with the first of its `paths` that still holds its
        content: "written", "changed" (none holds it) or "missing" (none exists)."""
        sources = [(text, path_from_column(text)) for text in paths]
        if not any(os.path.lexists(source) for _, source in sources):
            return "missing"
        if self.shard is not None and self.size.full(self.shard.images, self.shard.bytes, size):
            self._place()
        if self.shard is None:
            self._open()
        for text, source in sources:
            if self.shard.add(table, row, text, source, image_id, size, mtime_ns):
                return "written"
        return "changed"

    def _open(self) -> None:
        final = self.folder.dest / self.kind.FOLDER / self.kind.NAME.format(self.number)
        final.parent.mkdir(exist_ok=True)
        self.tmp = final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        self.final = final
        self.shard = self.kind.Shard(self.tmp, self.records)

    def _place(self) -> None:
        """Finish the shard in progress and link it into place (never over a file)."""
        if self.shard is None:
            return
        shard, self.shard = self.shard, None
        try:
            if shard.images:
                shard.close()
                try:
                    os.link(self.tmp, self.final)
                except FileExistsError:
                    raise ExportError(f"{self.final} appeared while this export wrote it; is another program "
                                      f"writing into {self.folder.dest}?") from None
                self.number += 1
                self.result.shards += 1
            else:
                shard.abort()
        finally:
            self.tmp.unlink(missing_ok=True)

    def _discard(self) -> None:
        if self.shard is not None:
            with contextlib.suppress(OSError):
                self.shard.abort()
            self.tmp.unlink(missing_ok=True)
            self.shard = None
