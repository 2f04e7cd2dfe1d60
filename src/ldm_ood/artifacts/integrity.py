"""File integrity: the sha256 recorded beside a model or calibration when it was written, checked
when it is read (a flipped byte, a truncated copy or a replaced file is refused, naming the file)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import IntegrityError

CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None, recorded_in: str | Path, redo: str) -> None:
    """Raise :class:`IntegrityError` when ``path``'s sha256 is not ``expected`` (recorded in
    ``recorded_in`` when the file was written); ``redo`` says how to make a good one. ``expected``
    None (a record written before hashes were kept) is not checked."""
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected:
        raise IntegrityError(path, f"sha256 {actual[:12]}… differs from {expected[:12]}… recorded in {recorded_in} "
                                   f"when it was written: the file was changed or corrupted; {redo}")
