"""Reading one case's scan, whatever holds it: an image file (:mod:`.io`) or a DICOM series (:mod:`.dicom`).

A scan source is what :attr:`~.manifest.Case.source` gives: a :class:`~.dicom.Series` found in a
folder tree, a folder holding one DICOM series (a manifest row may name one), or an image file
(NIfTI, PNG, NPY). A folder named like an image file (``x.nii.gz/``) is not a series folder: it is
refused by :func:`~.io.read_image` as a directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from .dicom import Series, read_series
from .io import IMAGE_SUFFIXES, Image, read_image, suffix_of

ScanSource = Union[str, Path, Series]


def read_scan(source: ScanSource, spatial_dims: int | None = None, allow_constant: bool = False) -> Image:
    """The validated :class:`~.io.Image` of ``source`` (``spatial_dims`` and ``allow_constant`` as in
    :func:`~.io.read_image`; a DICOM series is a scan, never constant)."""
    if isinstance(source, Series):
        return read_series(source, spatial_dims)
    path = Path(source)
    if path.is_dir() and suffix_of(path) not in IMAGE_SUFFIXES:
        return read_series(path, spatial_dims)
    return read_image(path, spatial_dims=spatial_dims, allow_constant=allow_constant)
