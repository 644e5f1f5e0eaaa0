"""The rows of one table version passing a filter, as row addresses: what Lance's prefilter takes
(`row_addr_allowlist`) and what a post-filter tests candidates against (`faramir.store.vectors.postfilter`).

Row addresses hold for one table version only (a compaction moves rows), so a list is built per
(table, version, filter) and kept by the Cache (`Cache.allow_list`)."""

from __future__ import annotations

import functools

import numpy as np

_OFFSET_BITS = 32  # a Lance row address: fragment id << 32 | row offset in the fragment
_OFFSET_MASK = np.uint64((1 << _OFFSET_BITS) - 1)


class AllowList:
    """The row addresses passing a filter, as a bitmap per fragment (a byte per row up to the last
    passing one: 1 MB at a million rows), so testing 2,000 candidates takes microseconds; the
    sorted addresses and their Lance serialisation are derived from it when asked for."""

    def __init__(self, addresses: np.ndarray, total_rows: int):
        addresses = np.sort(np.asarray(addresses, np.uint64))
        self.total_rows = total_rows
        self.passing = len(addresses)
        offsets = (addresses & _OFFSET_MASK).astype(np.int64)
        self._fragments, first, counts = np.unique(addresses >> np.uint64(_OFFSET_BITS), return_index=True,
                                                   return_counts=True)
        sizes = offsets[first + counts - 1] + 1  # a fragment's bits run to its last passing row
        self._starts = np.concatenate([[0], np.cumsum(sizes)])  # fragment i's: starts[i]..starts[i+1]
        self._bits = np.zeros(int(self._starts[-1]), bool)
        self._bits[np.repeat(self._starts[:-1], counts) + offsets] = True

    @classmethod
    def of(cls, ds, where: str) -> AllowList:
        """The rows of `ds` (one version of a table) passing the SQL filter `where`."""
        found = ds.to_table(columns=[], filter=where, with_row_address=True).column("_rowaddr")
        return cls(found.to_numpy(), ds.count_rows())

    @property
    def addresses(self) -> np.ndarray:
        """The passing rows' addresses, sorted (uint64)."""
        return np.concatenate([
            (np.uint64(fragment) << np.uint64(_OFFSET_BITS))
            + np.flatnonzero(self._bits[start:end]).astype(np.uint64)
            for fragment, start, end in zip(self._fragments, self._starts[:-1], self._starts[1:])
        ] or [np.zeros(0, np.uint64)])

    @functools.cached_property
    def serialized(self) -> bytes:
        """The addresses as Lance's `row_addr_allowlist` takes them; made when first asked for
        (a post-filtered search rarely needs it): about 0.1 s at 435,000 rows."""
        from lance.dataset import serialize_row_addrs

        return serialize_row_addrs(self.addresses.tolist())

    @property
    def share(self) -> float:
        """The fraction of the table's rows that pass."""
        return self.passing / self.total_rows if self.total_rows else 0.0

    def contains(self, addresses: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `addresses` pass."""
        addresses = np.asarray(addresses, np.uint64)
        if not len(self._fragments):
            return np.zeros(len(addresses), bool)
        fragments = addresses >> np.uint64(_OFFSET_BITS)
        at = np.minimum(np.searchsorted(self._fragments, fragments), len(self._fragments) - 1)
        offsets = (addresses & _OFFSET_MASK).astype(np.int64)
        inside = (self._fragments[at] == fragments) & (offsets < self._starts[at + 1] - self._starts[at])
        return inside & self._bits[np.where(inside, self._starts[at] + offsets, 0)]
