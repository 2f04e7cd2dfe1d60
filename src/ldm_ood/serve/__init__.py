"""The scoring service (``ldm-ood serve``): one model loaded once, one scan per HTTP request.

:mod:`.server` (start, signals, shutdown) → :mod:`.app` (the HTTP API and its errors) →
:mod:`.service` (uploads → session → kept maps) over :mod:`.admission` (bounded concurrency and
queue), :mod:`.uploads` (what is done with an uploaded file) and :mod:`.maps` (kept anomaly maps).
The model itself is a :class:`ldm_ood.methods.session.ScoringSession`.
"""
