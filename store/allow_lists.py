"""The rows of one table version passing a filter, as row addresses: what Lance's prefilter takes
(`row_addr_allowlist`) and what a post-filter tests candidates against (`store.postfilter`).

Row addresses hold for one table version only (a compaction moves rows), so a list is built per
(table, version, filter) and kept by the Cache (`Cache.allow_list`)."""

from __future__ import annotations

import numpy as np


class AllowList:
    """Sorted row addresses passing a filter, their Lance serialisation, and the table's row count."""

    def __init__(self, addresses: np.ndarray, total_rows: int):
        from lance.dataset import serialize_row_addrs

        self.addresses = np.sort(np.asarray(addresses, np.uint64))
        self.total_rows = total_rows
        self.serialized: bytes = serialize_row_addrs(self.addresses.tolist())

    @classmethod
    def of(cls, ds, where: str) -> AllowList:
        """The rows of `ds` (one version of a table) passing the SQL filter `where`."""
        found = ds.to_table(columns=[], filter=where, with_row_address=True).column("_rowaddr")
        return cls(found.to_numpy(), ds.count_rows())

    @property
    def share(self) -> float:
        """The fraction of the table's rows that pass."""
        return len(self.addresses) / self.total_rows if self.total_rows else 0.0

    def contains(self, addresses: np.ndarray) -> np.ndarray:
        """A boolean mask: which of `addresses` pass."""
        addresses = np.asarray(addresses, np.uint64)
        if not len(self.addresses):
            return np.zeros(len(addresses), bool)
        at = np.minimum(np.searchsorted(self.addresses, addresses), len(self.addresses) - 1)
        return self.addresses[at] == addresses
