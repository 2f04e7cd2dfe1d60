"""Pictures for people: radiological views and preview grids (:mod:`.preview`), used by synth and the report."""
