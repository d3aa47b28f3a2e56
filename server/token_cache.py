"""Bounded LRU caches of tokenized queries and items.

In real traffic the same member is ranked again within seconds (a page refresh, the next
slate, another surface), and the query, the member's profile and history, is the long part of
a request: a few hundred tokens against ~30 per item. Tokenizing it again is pure overhead, so
the service keeps the ids of recent queries, keyed on everything that changes them (the query
text and an optional instruction), and bounded twice: by entries and by tokens held, so a
burst of long queries cannot grow the server's memory. Candidate items repeat too (popular
items are candidates for many members), so a second cache of the same kind holds items,
looked up one by one with the misses tokenized in one batch call. Ids are stored as ``array('i')``
(4 bytes a token instead of a Python list's ~36) and handed out as a fresh list, so a caller
can never alter a cached entry.
"""

from __future__ import annotations

import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_TOKENS = 2_000_000  # 8 MB of ids


class TokenCache:
    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_tokens: int = DEFAULT_MAX_TOKENS
    ):
        if max_entries < 0 or max_tokens < 0:
            raise ValueError("max_entries and max_tokens must be >= 0 (0 disables the cache)")
        self.max_entries, self.max_tokens = max_entries, max_tokens
        self._entries: OrderedDict[Hashable, array] = OrderedDict()
        self._tokens = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tokens(self) -> int:
        return self._tokens

    def get(
        self, query: str, encode: Callable[[str], list[int]], instruction: str | None = None
    ) -> list[int]:
        """``encode(query)``, from the cache when (query, instruction) was seen recently."""
        key = (query, instruction)
        with self._lock:
            ids = self._entries.get(key)
            if ids is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return ids.tolist()
            self.misses += 1
        fresh = encode(query)
        if 0 < len(fresh) <= self.max_tokens and self.max_entries:
            self._put(key, array("i", fresh))
        return list(fresh)

    def get_many(
        self, texts: list[str], encode_batch: Callable[[list[str]], list[list[int]]]
    ) -> list[list[int]]:
        """``encode_batch(texts)``, each text from the cache when seen recently; the misses are
        tokenized together in one call."""
        out: list[list[int] | None] = [None] * len(texts)
        missing: list[int] = []
        with self._lock:
            for i, t in enumerate(texts):
                ids = self._entries.get((t, None))
                if ids is None:
                    missing.append(i)
                else:
                    self._entries.move_to_end((t, None))
                    out[i] = ids.tolist()
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        if missing:
            fresh = encode_batch([texts[i] for i in missing])
            for i, ids in zip(missing, fresh, strict=True):
                out[i] = list(ids)
                if 0 < len(ids) <= self.max_tokens and self.max_entries:
                    self._put((texts[i], None), array("i", ids))
        return out  # type: ignore[return-value]

    def _put(self, key: Hashable, ids: array) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._tokens -= len(old)
            self._entries[key] = ids
            self._tokens += len(ids)
            while len(self._entries) > self.max_entries or self._tokens > self.max_tokens:
                _, dropped = self._entries.popitem(last=False)
                self._tokens -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._tokens = 0
