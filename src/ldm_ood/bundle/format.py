"""``model.json`` of a model bundle: its format version, the sha256 of every file, the model id; opening
a bundle checks all three.

Format versions: :data:`FORMAT_VERSION` is what this code writes. A bundle of a newer version is
refused with a message saying which ldm-ood made it; an older one is brought up to date in memory by
:data:`MIGRATIONS` (one function per version step), the one place a future format change adds code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

from .. import __version__
from ..artifacts.integrity import verify_sha256
from ..errors import BundleError, IntegrityError
from ..runs import BUNDLE_META, RunDir

#: ``model.json``'s ``format``: what the file is
FORMAT = "ldm-ood-model-bundle"
#: the format version this code writes and reads
FORMAT_VERSION = 1
#: ``{version v: fn(meta of version v) -> meta of version v + 1}``; a bump of :data:`FORMAT_VERSION`
#: adds the step from the previous version here (a version without a step can no longer be read)
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

_REEXPORT = "export the bundle again from its run (`ldm-ood export --run RUN --out DIR`)"


def model_id_of(files: Mapping[str, str]) -> str:
    """The model id: 16 hex digits of the sha256 of ``{relative path: sha256}`` (sorted JSON): the same
    networks, configuration and calibration always give the same id, whenever they are exported."""
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelBundle:
    """An opened, verified bundle.

    ``root``: its folder, a run-directory layout (pass it where a run directory is taken, in folder
    mode: ``score_ldm(bundle.root, input_dir=..., output_dir=...)``); ``meta``: ``model.json``
    (brought to :data:`FORMAT_VERSION`); ``model_id``: 16 hex digits derived from its files' hashes.
    """

    root: Path
    meta: dict[str, Any]
    model_id: str

    @property
    def run(self) -> RunDir:
        return RunDir(self.root)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods it can run (``methods.registry`` names): those whose networks and calibration it holds."""
        return tuple(self.meta["methods"])

    def root_for(self, method: str) -> Path:
        """``root``, to score ``method`` from; :class:`~ldm_ood.errors.BundleError` when the bundle does not hold it."""
        if method not in self.methods:
            raise BundleError(self.root, f"has no calibrated {method} (it runs {', '.join(self.methods)}); calibrate "
                                         "it in the run and export again")
        return self.root


def upgrade(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """``meta`` at :data:`FORMAT_VERSION`: an older version migrated step by step (:data:`MIGRATIONS`);
    :class:`BundleError` for a newer one, one without a migration, or no version at all."""
    version = meta.get("format_version")
    if meta.get("format") != FORMAT or isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(path, f"is not an ldm-ood model bundle description (format {meta.get('format')!r}, "
                                f"format_version {version!r}); {_REEXPORT}")
    if version > FORMAT_VERSION:
        made_by = meta.get("versions", {}).get("ldm_ood", "a newer version") if isinstance(meta.get("versions"), dict) \
            else "a newer version"
        raise BundleError(path, f"bundle format version {version} was written by ldm-ood {made_by}; this ldm-ood "
                                f"({__version__}) reads format versions up to {FORMAT_VERSION}: upgrade ldm-ood to "
                                "score with it")
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise BundleError(path, f"bundle format version {version} can no longer be read by ldm-ood {__version__} "
                                    f"(it reads {FORMAT_VERSION}); {_REEXPORT}")
        meta = MIGRATIONS[version](dict(meta))
        version += 1
        meta["format_version"] = version
    return meta


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / BUNDLE_META
    if not root.is_dir():
        raise BundleError(root, "no such folder" if not root.exists() else "is not a folder; --model takes a bundle "
                                "folder written by `ldm-ood export`")
    if not path.is_file():
        raise BundleError(root, f"is not a model bundle (no {BUNDLE_META}); write one with "
                                "`ldm-ood export --run RUN --out DIR`, or pass a run directory with --run")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise IntegrityError(path, f"not readable ({type(err).__name__}: {err}); {_REEXPORT}") from None
    if not isinstance(meta, dict):
        raise IntegrityError(path, f"holds a {type(meta).__name__}, not a bundle description; {_REEXPORT}")
    return meta


def _listed_files(meta: Mapping[str, Any], path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of ``meta["files"]``; :class:`IntegrityError` for a malformed list or a
    path that is absolute, climbs out of the bundle (``..``) or names ``model.json`` itself."""
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise IntegrityError(path, f"has no valid 'files' list of sha256 by path; {_REEXPORT}")
    for rel in files:
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts or rel == BUNDLE_META:
            raise IntegrityError(path, f"lists {rel!r}, which is not a file inside the bundle; {_REEXPORT}")
    return dict(files)


def present_files(root: Path) -> set[str]:
    """Every file below ``root`` but ``model.json``, as POSIX paths relative to it (symbolic links to
    folders are not followed)."""
    out = set()
    for folder, _, names in os.walk(root):
        for name in names:
            out.add(Path(folder, name).relative_to(root).as_posix())
    return out - {BUNDLE_META}


def verify_files(root: Path, files: Mapping[str, str], meta_path: Path) -> None:
    """Every listed file exists with its recorded sha256, and no other file is there; an
    :class:`IntegrityError` naming the first file that does not match."""
    for rel, sha in files.items():
        target = root / rel
        if not target.is_file():
            raise IntegrityError(target, f"is missing from the bundle (listed in {meta_path}); {_REEXPORT}")
        verify_sha256(target, sha, meta_path, _REEXPORT)
    for rel in sorted(present_files(root) - set(files)):
        raise IntegrityError(root / rel, f"is not part of the bundle (not listed in {meta_path}): a bundle is "
                                         f"read-only; remove the file, or {_REEXPORT}")


def open_bundle(path: str | Path) -> ModelBundle:
    """Open the model bundle at ``path`` (a folder written by :func:`~ldm_ood.bundle.export_bundle`).

    Checks, in order: ``model.json`` is a bundle description of a format version this code reads
    (:class:`~ldm_ood.errors.BundleError` for a newer one, saying so); every file it lists is present
    with its sha256, and no other file is (:class:`~ldm_ood.errors.IntegrityError` naming the file:
    missing, truncated, changed or unlisted); the model id matches the files. Nothing is written.

    Returns:
        :class:`ModelBundle` with ``root`` (run-directory layout), ``meta`` (``model.json``) and ``model_id``.
    """
    root = Path(path)
    meta_path = root / BUNDLE_META
    meta = upgrade(_read_meta(root), meta_path)
    files = _listed_files(meta, meta_path)
    verify_files(root, files, meta_path)
    model_id = model_id_of(files)
    if meta.get("model_id") != model_id:
        raise IntegrityError(meta_path, f"model_id {meta.get('model_id')!r} is not the one of its files ({model_id}); "
                                        f"{_REEXPORT}")
    if not isinstance(meta.get("methods"), list):
        raise IntegrityError(meta_path, f"has no list of 'methods'; {_REEXPORT}")
    return ModelBundle(root, meta, model_id)
