"""The scoring service without its HTTP layer: one loaded model, the queue, the kept maps and the
private folder uploads go to; :mod:`.app` maps its results and errors to HTTP.

:meth:`ScoringService.score_upload` runs on a worker thread of the queue: it copies the upload into a
folder of its own (:mod:`.uploads`), reads it, scores it with the :class:`~ldm_ood.methods.session.ScoringSession`,
moves the anomaly map into the :class:`~.maps.MapStore` and deletes the upload's folder, whatever happened.
"""

from __future__ import annotations

import math
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError, UploadError
from ..methods.session import ScoringSession
from .admission import ScoringQueue
from .maps import MapStore
from .uploads import read_upload, remove_folder, save_upload, upload_case_id

MiB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs (``ldm-ood serve --help`` has each as an option).

    ``workers``: scans scored at once; ``queue``: admitted scans that may wait beyond those (then 429);
    ``threads``: torch threads of the process (None: ``torch.get_num_threads() // workers``, at least 1);
    ``max_upload_bytes``: the largest request body (413); ``max_image_bytes``: the largest image a
    gzip upload may decompress to (413); ``keep_maps`` / ``maps_bytes`` / ``map_ttl_s``: the bounds
    of the kept anomaly maps (0: none kept); ``drain_timeout_s``: how long a shutdown waits for the
    admitted scans before it cancels them.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    queue: int = 4
    threads: int | None = None
    max_upload_bytes: int = 256 * MiB
    max_image_bytes: int = 1024 * MiB
    keep_maps: int = 32
    maps_bytes: int = 512 * MiB
    map_ttl_s: float = 900.0
    drain_timeout_s: float = 120.0


def _finite_or_none(value: Any) -> float | None:
    """A score-file number as JSON can hold it: NaN/Inf (an input the input check refused) → None."""
    if value is None or value == "":
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ScoringService:
    """The session, its queue and kept maps, and a private folder (``tempfile.mkdtemp``, removed by :meth:`close`)."""

    def __init__(self, session: ScoringSession, settings: ServeSettings = ServeSettings()):
        self.session, self.settings = session, settings
        self.folder = Path(tempfile.mkdtemp(prefix="ldm-ood-serve-"))
        self.queue = ScoringQueue(settings.workers, settings.queue)
        self.maps = MapStore(self.folder / "maps", settings.keep_maps, settings.maps_bytes, settings.map_ttl_s)
        self.started = time.time()
        self._counts = {"scored": 0, "refused": 0, "failed": 0}
        self._lock = threading.Lock()

    def count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def score_upload(self, source: BinaryIO, filename: str | None) -> dict[str, Any]:
        """Score one upload (module docstring); the response's fields but ``queue_seconds`` and
        ``total_seconds``. ``UploadError`` for a bad upload."""
        name = filename or "upload"
        folder = self.folder / f"upload-{secrets.token_hex(8)}"
        folder.mkdir(mode=0o700)
        try:
            path = folder / "scan.nii"  # the reader decompresses gzip data whatever the suffix
            save_upload(source, path, self.settings.max_upload_bytes, name)
            image, series_id = read_upload(path, name, self.session.spatial_dims, self.settings.max_image_bytes)
            case_id = series_id or upload_case_id(filename)
            try:
                scored = self.session.score(image, folder / "out", case_id)
            except InputError as err:  # preprocessing refused the content (e.g. its dimensionality)
                raise UploadError(name, err.problem, 422) from None
            kept = self.maps.keep(scored.map_path, case_id)
        finally:
            remove_folder(folder)
        row = scored.row
        own = {"case_id", "pred_score", "percentile", "flag", "map_path", "model_score", "qc_reason", "calibration_id",
               "seconds"}
        return {
            "case_id": case_id,
            "model_id": self.session.model_id,
            "method": self.session.method,
            "score": _finite_or_none(row["pred_score"]),
            "model_score": _finite_or_none(row["model_score"]),
            "percentile": _finite_or_none(row["percentile"]),
            "flag": bool(int(row["flag"])),
            "threshold": self.session.threshold,
            "fpr": self.session.fpr,
            "qc_reason": row["qc_reason"] or None,
            "calibration_id": row["calibration_id"],
            "seconds": row["seconds"],
            "map": None if kept is None else {"id": kept.id, "url": f"/v1/maps/{kept.id}", "bytes": kept.size,
                                             "expires_in_s": self.settings.map_ttl_s},
            "metrics": {k: _finite_or_none(v) for k, v in row.items() if k not in own},
        }

    def close(self) -> None:
        """Refuse new scans (the admitted ones still run): the start of a shutdown."""
        self.queue.close()

    def shutdown(self) -> None:
        """Wait for the admitted scans, then delete the private folder (uploads and kept maps)."""
        self.queue.shutdown(wait=True)
        self.maps.clear()
        remove_folder(self.folder)
