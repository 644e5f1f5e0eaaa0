"""The rows of one table version passing a filter, as row addresses: what Lance's prefilter takes
(`row_addr_allowlist`) and what a post-filter tests candidates against (`store.postfilter`).

Row addresses hold for one table version only (a compaction moves rows), so a list is built per
(table, version, filter) and kept by the Cache (`Cache.allow_list`)."""

from __future__ import annotations

import functools

import numpy as np

_OFFSET_BITS = 32  # a Lance row address: fragment id << 32 | row offset in the fragment
_OFFSET_MASK = np.uint64((1 << _OFFSET_BITS) - 1)


class AllowList:
    """Sorted row addresses passing a filter, their Lance serialisation, and the table's row count;
    membership is a bitmap per fragment (a byte per row up to the last passing one: 1 MB at a
    million rows), so testing 2,000 candidates takes microseconds."""

    def __init__(self, addresses: np.ndarray, total_rows: int):
        self.addresses = np.sort(np.asarray(addresses, np.uint64))
        self.total_rows = total_rows
        fragments = self.addresses >> np.uint64(_OFFSET_BITS)
        offsets = (self.addresses & _OFFSET_MASK).astype(np.int64)
        self._fragments, first, counts = np.unique(fragments, return_index=True, return_counts=True)
        sizes = offsets[first + counts - 1] + 1  # a fragment's bits run to its last passing row
        self._starts = np.concatenate([[0], np.cumsum(sizes)])  # fragment i's: starts[i]..starts[i+1]
        self._bits = np.zeros(int(self._starts[-1]), bool)
        self._bits[np.repeat(self._starts[:-1], counts) + offsets] = True

    @classmethod
    def of(cls, ds, where: str) -> AllowList:
        """The rows of `ds` (one version of a table) passing the SQL filter `where`."""
        found = ds.to_table(columns=[], filter=where, with_row_address=True).column("_rowaddr")
        return cls(found.to_numpy(), ds.count_rows())

    @functools.cached_property
    def serialized(self) -> bytes:
        """The addresses as Lance's `row_addr_allowlist` takes them; made when first asked for
        (a post-filtered search rarely needs it): about 0.1 s at 435,000 rows."""
        from lance.dataset import serialize_row_addrs

        return serialize_row_addrs(self.addresses.tolist())

    @property
    def share(self) -> float:
        """The fraction of the table's rows that pass."""
        return len(self.addresses) / self.total_rows if self.total_rows else 0.0

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
