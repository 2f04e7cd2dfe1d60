"""Where a method's outputs may go, and how they are written (paper 000 §2.3 maps, paper 001 images).

* :func:`check_output_folder`: every output of a job is ``<out_dir>/<case_id><suffix>``; the folder
  must lie inside the output root (the run directory, or the ``--output`` folder of folder mode), the
  case id must be a plain name (no separator, no leading dot: ``data.manifest.plain_name``), and no
  input scan of the job (no file of a DICOM series) may live directly in it, so an output can never
  overwrite an input;
* :func:`write_image_atomic` / :func:`write_on_input_grid`: images are written to a temporary file
  and renamed into place, so a full disk or a kill leaves no torn map; a failure is an
  :class:`~ldm_ood.errors.OutputError` naming the output path;
* :func:`check_outside_bundle`: no output folder inside a (read-only) model bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts.atomic import atomic_write
from ..data.io import suffix_of, write_image
from ..data.manifest import Case, plain_name
from ..errors import InputError, OutputError


def _real(path: Path) -> Path:
    """The path with every symbolic link resolved (a link loop is left as it is, never an exception)."""
    return Path(os.path.realpath(path))


def _inside(path: Path, root: Path) -> bool:
    return _real(path).is_relative_to(_real(root))


def check_output_folder(out_dir: str | Path, root: str | Path, cases: Sequence[Case]) -> None:
    """Refuse a job whose outputs could land outside ``root`` or on one of its inputs (module docstring)."""
    out_dir, root = Path(out_dir), Path(root)
    if not _inside(out_dir, root):
        raise OutputError(out_dir, f"resolves outside the output root {root}; refusing to write there")
    for case in cases:
        problem = plain_name(case.case_id)
        if problem is not None:
            raise InputError(case.path, f"case_id {case.case_id!r} {problem}; it names output files")
        files = case.series.files if case.series is not None else (case.path,)
        if any(_real(f).parent == _real(out_dir) for f in files):
            what = f"the DICOM series {case.series.uid}" if case.series is not None else "the input scan"
            raise OutputError(out_dir, f"holds {what} {case.path}: outputs would overwrite inputs; "
                                       "choose an output folder that is not the input folder")


def check_outside_bundle(out_dir: str | Path, bundle_root: str | Path) -> None:
    """Refuse an output folder inside a model bundle (read-only), before anything is created there."""
    if _inside(Path(out_dir), Path(bundle_root)):
        raise OutputError(out_dir, f"lies inside the model bundle {bundle_root}, which is read-only; choose an "
                                   "output folder outside it")


def write_image_atomic(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """:func:`ldm_ood.data.io.write_image` through a temporary file renamed into place."""
    return atomic_write(path, lambda tmp: write_image(tmp, array, affine))


def write_on_input_grid(preprocessor: Any, array: Any, meta: Any, path: str | Path) -> Path:
    """Write ``array (*grid)`` on the input's native grid and affine (``Preprocessor.invert``), atomically."""
    native = preprocessor.invert(array, meta)
    return write_image_atomic(path, native.array, native.affine)


def write_segmentation(preprocessor: Any, meta: Any, case: Case, out_dir: Path, healed: Any, amap: Any,
                       threshold: float) -> dict[str, str]:
    """``<case>_healed``, ``<case>_map`` and ``<case>_mask`` (= map ≥ ``threshold``) from ``(*grid)``
    tensors, on the input's native grid (PNG for PNG inputs, else NIfTI), written atomically; their
    paths by score-file column (``healed_path``, ``map_path``, ``mask_path``). Every segmentation method's outputs."""
    ext = ".png" if case.series is None and suffix_of(case.path) == ".png" else ".nii.gz"
    h = preprocessor.invert(healed.cpu().numpy(), meta)
    m = preprocessor.invert(amap.cpu().numpy(), meta)
    binary = (m.array >= threshold).astype(np.float32 if ext == ".png" else np.uint8)
    paths = {k: Path(out_dir) / f"{case.case_id}_{k}{ext}" for k in ("healed", "map", "mask")}
    write_image_atomic(paths["healed"], h.array, h.affine)
    write_image_atomic(paths["map"], m.array, m.affine)
    write_image_atomic(paths["mask"], binary, m.affine)
    return {f"{k}_path": str(p) for k, p in paths.items()}
