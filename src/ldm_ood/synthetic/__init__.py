"""The built-in synthetic benchmark (DESIGN.md): head-CT cohort, near- and far-OOD sets, 2D sprite slices.

* :mod:`.anatomy` — subjects drawn from nilearn's MNI152 tissue maps (skull, scalp, ventricles, CT values);
* :mod:`.far_ood` — the far-OOD classes (real MR from installed packages, synthetic abdomen/chest CT, ...);
* :mod:`.cohort` — :func:`~ldm_ood.synthetic.cohort.synth`: writes every set and its manifest.

The near-OOD corruptions are :mod:`ldm_ood.data.corruptions` (they apply to real scans too).
"""
