"""The pipeline's cache of recent results, so re-asking for a prompt and seed (a scrub, an export) costs nothing."""

from __future__ import annotations

import threading
from collections import OrderedDict

class ResultCache:
    """Recent results by (prompt, seed), bounded by count and by bytes (a result's size grows once baked)."""

    def __init__(self, max_items: int = 32, max_bytes: int = 512 * 2**20):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict()

    def trim(self) -> None:
        with self._lock:
            self._evict()

    def _evict(self) -> None:
        while len(self._items) > self.max_items or (len(self._items) > 1 and self.nbytes() > self.max_bytes):
            self._items.popitem(last=False)

    def nbytes(self) -> int:
        return sum(v.nbytes() for v in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
