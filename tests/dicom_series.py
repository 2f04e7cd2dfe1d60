"""Multi-slice DICOM series built from the single slices that ship with pydicom (its installed test-data
folder: ``CT_small.dcm`` 128×128 CT, ``MR_small.dcm`` 64×64 MR; nothing is downloaded).

``write_series(folder, n, ...)`` copies the template slice ``n`` times with pydicom, giving each copy
its own ImagePositionPatient (``origin + k · step · normal``, ``normal = X × Y`` of the orientation),
SOPInstanceUID, a shuffled InstanceNumber and file name, and the series' SeriesInstanceUID; the
pixels of slice ``k`` are ``pixels(k)`` (default: the template's stored values + 10·k, so that
every slice is told apart). Imported by tests (``tests/`` is on the path).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom
import pydicom.data
from pydicom.uid import generate_uid

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def pydicom_file(name: str) -> Path:
    """A file of pydicom's installed test data (only files present locally are used)."""
    path = TEST_FILES / name
    assert path.is_file(), f"{name} is not in pydicom's installed test data ({TEST_FILES})"
    return path


def template(name: str = "CT_small.dcm") -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_file(name))


def stored(ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values ``(rows, columns)`` of a slice (before RescaleSlope / Intercept)."""
    return ds.pixel_array.astype(np.int16)


def write_series(
    folder: Path,
    n: int,
    name: str = "CT_small.dcm",
    *,
    uid: str | None = None,
    origin: Sequence[float] = (-80.0, -90.0, -30.0),
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] | None = None,
    step: float = 5.0,
    pixels: Callable[[int], np.ndarray] | None = None,
    skip: Sequence[int] = (),
    seed: int = 0,
    edit: Callable[[int, pydicom.Dataset], None] | None = None,
) -> tuple[str, list[Path]]:
    """``(SeriesInstanceUID, files in slice order)`` of ``n`` slices written to ``folder`` (module
    docstring); ``skip``: slice indices left out (missing slices); ``edit(k, ds)``: a last change per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    base = template(name)
    base_pixels = stored(base)
    uid = uid or generate_uid()
    rng = np.random.default_rng(seed)
    file_order, instance_numbers = rng.permutation(n), rng.permutation(n) + 1
    x, y = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(x, y)
    files = []
    for k in range(n):
        if k in skip:
            continue
        ds = copy.deepcopy(base)  # Dataset.copy() is shallow: an edit would reach the template
        values = base_pixels + 10 * k if pixels is None else pixels(k)
        ds.PixelData = np.ascontiguousarray(values.astype(np.int16)).tobytes()
        ds.Rows, ds.Columns = values.shape
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(instance_numbers[k])
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in np.asarray(origin, float) + k * step * normal]
        if pixel_spacing is not None:
            ds.PixelSpacing = [f"{v:.10g}" for v in pixel_spacing]
        if edit is not None:
            edit(k, ds)
        path = folder / f"IM{int(file_order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return uid, files
