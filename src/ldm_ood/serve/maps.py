"""Anomaly maps kept for a while after their scan was scored, so a client can fetch them
(``GET /v1/maps/{id}``): on disk, in the service's private folder, within fixed bounds.

At most ``max_count`` maps and ``max_bytes`` bytes are kept, each at most ``ttl_s`` seconds; when a new
map would go beyond a bound, the oldest are deleted first (a map larger than ``max_bytes`` on its own is
not kept). A map being downloaded while it is evicted is still sent whole: :meth:`MapStore.open`
returns an open file, which outlives its deletion.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable


@dataclass(frozen=True)
class KeptMap:
    """A kept map: its ``id`` (32 hex digits), the scan's ``case_id``, its ``size`` in bytes and when it
    ``expires`` (on the store's clock)."""

    id: str
    case_id: str
    size: int
    expires: float

    @property
    def filename(self) -> str:
        """The file name a download is offered under."""
        return f"{self.case_id}_anomaly_map.nii.gz"


class MapStore:
    """Maps by id in ``folder`` (created, private), within the bounds of the module docstring.
    ``clock``: seconds, monotonic (``time.monotonic``)."""

    def __init__(self, folder: str | Path, max_count: int = 32, max_bytes: int = 512 << 20, ttl_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_count, self.max_bytes, self.ttl_s, self.clock = max_count, max_bytes, ttl_s, clock
        self._maps: OrderedDict[str, KeptMap] = OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def _path(self, map_id: str) -> Path:
        return self.folder / f"{map_id}.nii.gz"

    def _drop(self, map_id: str) -> None:
        self._maps.pop(map_id, None)
        self._path(map_id).unlink(missing_ok=True)

    def _expire(self) -> None:
        now = self.clock()
        for map_id in [k for k, m in self._maps.items() if m.expires <= now]:
            self._drop(map_id)

    @property
    def enabled(self) -> bool:
        return self.max_count > 0 and self.max_bytes > 0 and self.ttl_s > 0

    def keep(self, source: str | Path, case_id: str) -> KeptMap | None:
        """Move the map file ``source`` (on the same file system) into the store; None when maps are
        not kept (a bound of 0) or it is larger than ``max_bytes`` (then ``source`` is deleted)."""
        source = Path(source)
        size = source.stat().st_size
        if not self.enabled or size > self.max_bytes:
            source.unlink(missing_ok=True)
            return None
        kept = KeptMap(secrets.token_hex(16), case_id, size, self.clock() + self.ttl_s)
        with self._lock:
            self._expire()
            while self._maps and (len(self._maps) >= self.max_count or self.total_bytes + size > self.max_bytes):
                self._drop(next(iter(self._maps)))
            os.replace(source, self._path(kept.id))
            self._maps[kept.id] = kept
        return kept

    @property
    def total_bytes(self) -> int:
        return sum(m.size for m in self._maps.values())

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._maps)

    def open(self, map_id: str) -> tuple[KeptMap, BinaryIO] | None:
        """The kept map ``map_id`` and its file opened for reading (the caller closes it); None when
        there is no such map (never kept, expired, evicted or deleted)."""
        with self._lock:
            self._expire()
            kept = self._maps.get(map_id)
            if kept is None:
                return None
            return kept, self._path(map_id).open("rb")

    def delete(self, map_id: str) -> bool:
        """Delete a kept map; False when there was none."""
        with self._lock:
            self._expire()
            if map_id not in self._maps:
                return False
            self._drop(map_id)
            return True

    def clear(self) -> None:
        with self._lock:
            for map_id in list(self._maps):
                self._drop(map_id)
