"""Portable model bundles: train once, score elsewhere (``ldm-ood export``, ``score --model``).

A bundle is a folder laid out like a run directory (:class:`~ldm_ood.runs.RunDir`), holding only
what scoring needs, so the run's own loading code reads it unchanged::

    model/model.json                       format version, versions, methods, training data, calibration
                                           operating points, benchmark AUCs, model id, sha256 of every file
          config.yaml                      the run's configuration (preprocessing: grid, spacing, window)
          first_stage/ ldm/ transformer/ ...   model.safetensors, config.json, DONE (of the calibrated methods)
          ensemble/<k>_<ordering>/transformer/ ...
          calibration/<method>...          the calibration files, input domains and records

* :func:`export_bundle` (``ldm-ood export --run RUN --out model/``) writes one;
* :func:`open_bundle` checks its format version and every checksum and returns a :class:`ModelBundle`;
  a bundle is read-only: scoring writes only to the ``--output`` folder
  (:meth:`~ldm_ood.runs.RunDir.check_writable`).

Usage (the scoring functions take the bundle's root like a run directory, in folder mode)::

    bundle = open_bundle("model/")             # IntegrityError / BundleError naming the file
    score_ldm(bundle.root, input_dir="scans/", output_dir="out/")
"""

from .export import export_bundle
from .format import FORMAT_VERSION, ModelBundle, open_bundle

__all__ = ["FORMAT_VERSION", "ModelBundle", "export_bundle", "open_bundle"]
